"""Trained reward models on held-out problems: step-level AUROC and best-of-N selection accuracy.

Issue 5's measures. On ``tiny``'s arithmetic task (or ``--model smollm2 --task rg:...``):

1. **Train.** Sample ``--samples`` solutions per training problem with the policy and label their
   steps Math-Shepherd style (``--k`` rollouts per step prefix, ``rewards/labels.py``). Train on them
   a PRM (hard labels, ``learn/prm.py``), an ORM (the same solutions' verdicts, ``learn/orm.py``) and
   an implicit PRM (PRIME: the ORM objective in the log-ratio parametrisation).
2. **AUROC.** Auto-label held-out test solutions the same way; report the step-level AUROC of the PRM
   against the hard labels (beside the implicit PRM's step rewards and the ORM read on each prefix),
   and outcome-level AUROC of every model against the verifier.
3. **Best-of-N.** Sample 32 solutions per test problem once; for N = 4, 8, 16, 32 cut them into 32/N
   disjoint groups and pick one per group with each method: ORM, PRM (min, last), PRM-weighted vote,
   implicit PRM (min step reward) and its implicit ORM, self-consistency (majority vote), the policy's
   own confidence (mean token log-prob, untrained) and the verifier oracle (any correct). Accuracy is
   averaged over groups and problems, so every method sees exactly the same samples.
4. ``--search``: REBASE and beam search with the trained PRM as scorer against self-consistency:
   does step-level search reach self-consistency's best accuracy with at most half its generated
   tokens? The ratio is reported either way.

Prints markdown tables and writes JSON (``--out``). Labelled data is cached in ``--workdir`` (delete
it, or pass ``--fresh``, to relabel); the models are retrained on every run.

    python benchmarks/reward_models.py --quick                  # 1-3 minutes
    python benchmarks/reward_models.py                          # the full tiny run, ~15 minutes on 2 idle cores
    python benchmarks/reward_models.py --search                 # + PRM-guided search, a few minutes more
    python benchmarks/reward_models.py --model smollm2 --task rg:basic_arithmetic --quick    # a smoke test; the
                                                                # full smollm2 run takes hours on a CPU (use a GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reasonlab.evaluation.metrics import majority
from reasonlab.rewards.reward_model import auroc

NS = (4, 8, 16, 32)


def settings(args) -> dict:
    """Sizes per mode: --quick is a smoke run, the default the reported one."""
    tiny = args.model == "tiny"
    if args.quick:
        s = dict(train_problems=48, samples=4, k=4, test_problems=24, label_test=2, steps=30, batch_size=16,
                 search_problems=12)
    else:
        s = dict(train_problems=400, samples=4, k=8, test_problems=100, label_test=4, steps=150, batch_size=32,
                 search_problems=50)
    s.update(separator="\n" if args.task == "arith" else "\n\n", max_new_tokens=48 if tiny else 384,
             temperature=0.8, lr=3e-4 if tiny else 2e-5, max_seq_len=256 if tiny else 1024, max_n=max(NS))
    if not tiny:  # a 135M model on a CPU: hours for the full run; --quick is a smoke test of the path
        s["batch_size"] = 8
        if args.quick:
            s.update(train_problems=8, samples=2, k=2, test_problems=4, label_test=1, steps=4, search_problems=2,
                     max_new_tokens=256, max_n=4)
    for key in ("train_problems", "test_problems", "steps", "k", "samples", "max_n", "batch_size"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    return s


def cached_labels(path: Path, make) -> list[dict]:
    if path.exists():
        print(f"reusing {path}", file=sys.stderr)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = make()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def label(policy, task, examples, s, n, k, seed) -> list[dict]:
    from reasonlab.rewards.labels import LabelConfig, label_task

    cfg = LabelConfig(samples_per_problem=n, k=k, temperature=s["temperature"], max_new_tokens=s["max_new_tokens"],
                      separator=s["separator"].encode("unicode_escape").decode(), batch_problems=8, seed=seed)
    return [r for rows in label_task(policy, task, examples, cfg) for r in rows]


def train_models(rows: list[dict], s: dict, args, workdir: Path) -> dict:
    """PRM, ORM and implicit PRM trained on the same labelled solutions; returns the loaded models and summaries."""
    from reasonlab.learn import orm as orm_lib
    from reasonlab.learn import prm as prm_lib
    from reasonlab.rewards.reward_model import load_reward_model

    common = dict(model=args.model, max_steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], log_every=50,
                  eval_every=0, save_every=0, eval_fraction=0.1, max_seq_len=s["max_seq_len"], device="cpu",
                  warmup_steps=10)
    outcome_rows = [{"id": r["id"], "prompt": r["prompt"], "completion": r["completion"],
                     "label": float(r["final_correct"])} for r in rows if r["final_correct"] is not None]
    out, summaries = {}, {}
    jobs = [("prm", lambda d: prm_lib.train(prm_lib.PRMConfig(out=d, labels="hard", **common), rows)),
            ("orm", lambda d: orm_lib.train(orm_lib.ORMConfig(out=d, **common), outcome_rows)),
            ("implicit", lambda d: orm_lib.train(orm_lib.ORMConfig(
                out=d, objective="implicit", beta=0.05, separator=s["separator"].encode("unicode_escape").decode(),
                **common), outcome_rows))]
    for name, run in jobs:
        if name not in args.models:
            continue
        d = workdir / f"train-{name}"
        t0 = time.time()
        done = {}
        if args.reuse_models and (d / "summary.json").exists():
            done = json.loads((d / "summary.json").read_text())
        if done and (d / "final").is_dir() and not done.get("interrupted"):
            summary = {**done, "final_dir": str(d / "final")}
            print(f"{name}: reusing the model an earlier run trained in {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)
            summary = run(str(d))
        summaries[name] = {**{k: summary[k] for k in ("steps", "train_rows", "first_loss", "final_loss", "eval")},
                           "train_s": round(summary.get("wall_time_s", time.time() - t0), 1)}
        out[name] = load_reward_model(summary["final_dir"], device="cpu", batch_size=64)
    return {"models": out, "summaries": summaries}


def step_auroc(models: dict, rows: list[dict]) -> dict:
    """Step-level AUROC against Math-Shepherd hard labels of held-out solutions."""
    prompts = [r["prompt"] for r in rows]
    steps = [r["steps"] for r in rows]
    labels = [y for r in rows for y in r["hard_labels"]]
    keep = [i for i, y in enumerate(labels) if y is not None]

    def flat(per_step):
        xs = [x for s in per_step for x in s]
        return auroc([xs[i] for i in keep], [labels[i] for i in keep])

    prm, imp, orm = models.get("prm"), models.get("implicit"), models.get("orm")
    out = {}
    if prm is not None:
        out["prm"] = flat(prm.score_steps(prompts, steps))
    if imp is not None:
        out["implicit-prm (step reward)"] = flat(imp.score_steps(prompts, steps))
        imp.mode = "value"
        out["implicit-prm (value)"] = flat(imp.score_steps(prompts, steps))
        imp.mode = "step"
    if orm is not None:
        # The ORM read on each prefix (as if the solution ended there): the baseline a PRM must beat.
        sep = rows[0]["separator"] if rows else "\n"
        prefixes = [(p, sep.join(st[:j + 1])) for p, st in zip(prompts, steps) for j in range(len(st))]
        orm_prefix = orm.score_outcomes([p for p, _ in prefixes], [t for _, t in prefixes])
        out["orm (on each prefix)"] = auroc([orm_prefix[i] for i in keep], [labels[i] for i in keep])
    return {**out, "labelled_steps": len(keep), "positive_fraction": sum(labels[i] for i in keep) / max(1, len(keep)),
            "solutions": len(rows)}


def score_samples(models: dict, samples: list[dict]) -> dict[str, list[float]]:
    """Every selection signal for every sample (flat list, problem-major)."""
    prompts = [x["prompt"] for x in samples]
    texts = [x["text"] for x in samples]
    prm, imp, orm = models.get("prm"), models.get("implicit"), models.get("orm")
    from reasonlab.rewards.reward_model import split_solution

    out = {}
    if orm is not None:
        out["orm"] = orm.score_outcomes(prompts, texts)
    if prm is not None:
        per_step = prm.score_steps(prompts, [split_solution(t, prm.separator) for t in texts])
        out.update({"prm-min": [min(s) for s in per_step], "prm-last": [s[-1] for s in per_step]})
    if imp is not None:
        imp_steps = imp.score_steps(prompts, [split_solution(t, imp.separator) for t in texts])
        out.update({"implicit-prm-min": [min(s) for s in imp_steps],
                    # The step rewards add up to the implicit ORM's logit r(y), so this is its outcome score.
                    "implicit-orm": [1 / (1 + math.exp(-sum(s))) for s in imp_steps]})
    return out


def best_of_n(samples: list[dict], scores: dict[str, list[float]], per_problem: int) -> dict[str, dict[int, float]]:
    """Accuracy of each selection method at each N, averaged over the 32/N disjoint groups of every problem."""
    from reasonlab.search.base import argmax, weighted_vote

    n_problems = len(samples) // per_problem
    methods = ["oracle", "majority", "single sample", "confidence", *scores] + (["prm-min vote"] if "prm-min" in scores else [])
    acc = {m: {} for m in methods}
    for n in NS:
        if n > per_problem:
            continue
        hits = {m: 0.0 for m in methods}
        groups = 0
        for p in range(n_problems):
            base = p * per_problem
            for g in range(per_problem // n):
                idx = list(range(base + g * n, base + (g + 1) * n))
                correct = [samples[i]["correct"] for i in idx]
                keys = [samples[i]["key"] for i in idx]
                groups += 1
                hits["oracle"] += any(correct)
                hits["single sample"] += sum(correct) / n
                # The policy's own mean token log-prob (the search layer's "confidence" scorer): no training.
                hits["confidence"] += correct[argmax([samples[i]["mean_logprob"] for i in idx])]
                winner, _ = majority(keys)
                hits["majority"] += winner is not None and any(c for k, c in zip(keys, correct) if k == winner)
                for m, vals in scores.items():
                    hits[m] += correct[argmax([vals[i] for i in idx])]
                if "prm-min" in scores:
                    winner, _ = weighted_vote(keys, [scores["prm-min"][i] for i in idx])
                    hits["prm-min vote"] += winner is not None and any(c for k, c in zip(keys, correct) if k == winner)
        for m in methods:
            acc[m][n] = hits[m] / groups
    return acc


def search_compare(policy, task, examples, prm, samples: list[dict], per_problem: int, s: dict) -> dict:
    """Self-consistency (from the shared samples) vs REBASE / beam with the PRM: accuracy and generated tokens."""
    from reasonlab.search.scorers import as_scorer
    from reasonlab.search import make_strategy

    sc = {}
    for n in NS:
        if n > per_problem:
            continue
        hits, tokens = 0, 0
        for p in range(len(examples)):
            grp = samples[p * per_problem:p * per_problem + n]  # the first n samples, as SC@n would draw them
            winner, _ = majority([x["key"] for x in grp])
            hits += winner is not None and any(x["correct"] for x in grp if x["key"] == winner)
            tokens += sum(x["tokens"] for x in grp)
        sc[n] = {"accuracy": hits / len(examples), "tokens": tokens / len(examples)}
    step_opts = dict(separator=s["separator"], max_step_tokens=16 if s["max_new_tokens"] <= 64 else 128,
                     max_steps=6 if s["max_new_tokens"] <= 64 else 12, max_new_tokens=s["max_new_tokens"],
                     temperature=s["temperature"])
    configs = [("rebase", {"width": w, "pick": "vote"}, "min") for w in (4, 8, 16)]
    configs += [("rebase", {"width": 8, "pick": "best"}, "min"), ("beam", {"beams": 8, "width": 2, "pick": "best"}, "last")]
    runs = []
    for name, opts, how in configs:
        scorer, strategy = as_scorer(prm, how), make_strategy(name, **step_opts, **opts)
        hits, tokens, t0 = 0, 0, time.time()
        for ex in examples:
            r = strategy.search(ex, policy, task, scorer)
            hits += task.score(ex, r.text).correct
            tokens += r.compute.generated_tokens
        runs.append({"strategy": name, **opts, "aggregation": how, "accuracy": hits / len(examples),
                     "tokens": tokens / len(examples), "wall_s": round(time.time() - t0, 1)})
        print(f"  {name} {opts} prm-{how}: acc {runs[-1]['accuracy']:.3f}, {runs[-1]['tokens']:.0f} tokens/problem",
              file=sys.stderr)
    best_n = max(sc, key=lambda n: (sc[n]["accuracy"], -n))
    target = sc[best_n]
    reaching = [r for r in runs if r["accuracy"] >= target["accuracy"]]
    cheapest = min(reaching, key=lambda r: r["tokens"]) if reaching else None
    return {"self_consistency": sc, "sc_best_n": best_n, "prm_search": runs, "cheapest_reaching_sc_best": cheapest,
            "token_ratio": cheapest["tokens"] / target["tokens"] if cheapest else None,
            "best_search": max(runs, key=lambda r: (r["accuracy"], -r["tokens"]))}


def fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="policy and reward-model backbone (tiny, smollm2, a checkpoint)")
    ap.add_argument("--task", default="arith", help="task spec, e.g. arith or rg:basic_arithmetic")
    ap.add_argument("--task-options", default="", help="task options as YAML (default: the eval harness's, for its default task)")
    ap.add_argument("--quick", action="store_true", help="a 1-3 minute smoke run")
    ap.add_argument("--search", action="store_true", help="also compare PRM-guided REBASE / beam with self-consistency")
    ap.add_argument("--train-problems", type=int, default=None)
    ap.add_argument("--test-problems", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None, help="solutions labelled per training problem")
    ap.add_argument("--k", type=int, default=None, help="rollouts per step prefix")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per reward model")
    ap.add_argument("--max-n", type=int, default=None, help="samples per test problem, the largest N reported (32)")
    ap.add_argument("--models", default="prm,orm,implicit",
                    help="which reward models to train and compare (comma-separated: prm, orm, implicit)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per reward-model training step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny on a busy machine)")
    ap.add_argument("--workdir", default=None, help="labelled data cache and training runs")
    ap.add_argument("--fresh", action="store_true", help="relabel instead of reusing cached labels")
    ap.add_argument("--reuse-models", action="store_true",
                    help="load reward models an earlier run finished in WORKDIR instead of training them again "
                         "(only valid with the same labels and settings)")
    ap.add_argument("--out", default=None, help="results JSON (default: WORKDIR/results.json)")
    args = ap.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - {"prm", "orm", "implicit"}
    if unknown or not args.models:
        ap.error(f"--models takes prm, orm, implicit; got {args.models}")
    if args.search and "prm" not in args.models:
        ap.error("--search compares search guided by the trained PRM: include prm in --models")

    import torch

    from reasonlab.policies import load_policy
    from reasonlab.tasks import load_task
    from reasonlab.types import SamplingParams

    torch.set_num_threads(args.threads)
    s = settings(args)
    tag = f"{Path(args.model).name}-{args.task.replace(':', '_')}" + ("-quick" if args.quick else "")
    workdir = Path(args.workdir or f"runs/bench-reward-models/{tag}")
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings = {}
    from reasonlab.evaluation.harness import task_options

    # The default eval task keeps its own options (few-shot two-term sums), as `reasonlab eval` does.
    task = load_task(args.task, **task_options(args))
    # Training labels are judged strictly, as `reasonlab label` and the RL rewards judge them (a hedge is no positive
    # label); held-out accuracy below keeps the evaluation reading.
    strict_task = load_task(args.task, **task_options(args))
    strict_task.use_strict_verifier()
    policy = load_policy(args.model, **({"device": "cpu"} if args.model == "tiny" else {}))

    # 1. Labelled training data and the three reward models.
    t0 = time.time()
    train_ex = task.examples("train", s["train_problems"])
    size = f"{s['train_problems']}x{s['samples']}-k{s['k']}-strict"
    train_rows = cached_labels(workdir / f"train-{size}.jsonl",
                               lambda: label(policy, strict_task, train_ex, s, s["samples"], s["k"], seed=1))
    timings["label_train_s"] = round(time.time() - t0, 1)
    print(f"train labels: {len(train_rows)} solutions ({timings['label_train_s']}s)", file=sys.stderr)
    t0 = time.time()
    trained = train_models(train_rows, s, args, workdir)
    models = trained["models"]
    timings["train_s"] = round(time.time() - t0, 1)

    # 2. Held-out samples: N_max per problem, once, for every selection method.
    t0 = time.time()
    test_ex = task.examples("test", s["test_problems"])
    per_problem = s["max_n"]
    comps = policy.generate([e.prompt for e in test_ex],
                            SamplingParams(n=per_problem, temperature=s["temperature"], max_new_tokens=s["max_new_tokens"],
                                           stop=tuple(task.stop), seed=12345))
    exs = [test_ex[c.prompt_index] for c in comps]
    results = task.score_many(exs, [c.text for c in comps])
    samples = [{"prompt": e.prompt, "text": c.text, "correct": r.correct, "key": task.answer_key(r.extracted),
                "tokens": c.completion_tokens,
                "mean_logprob": sum(c.logprobs) / len(c.logprobs) if c.logprobs else -math.inf}
               for e, c, r in zip(exs, comps, results)]
    timings["sample_test_s"] = round(time.time() - t0, 1)

    # 3. Step-level AUROC on auto-labelled held-out solutions (distinct ones, the first few per problem).
    t0 = time.time()
    by_problem = {}
    for e, x in zip(exs, samples):
        sols = by_problem.setdefault(e.id, [])
        if x["text"] not in sols and len(sols) < s["label_test"]:
            sols.append(x["text"])
    from reasonlab.rewards.labels import label_solutions, resolve_separator

    def label_test():
        sampling = SamplingParams(temperature=s["temperature"], max_new_tokens=s["max_new_tokens"],
                                  stop=tuple(task.stop), seed=777)
        rows = []
        for b in range(0, len(test_ex), 8):
            batch = test_ex[b:b + 8]
            rows += label_solutions(policy, strict_task, batch, [by_problem[e.id] for e in batch], k=s["k"],
                                    separator=resolve_separator(s["separator"].encode("unicode_escape").decode(),
                                                                args.task), sampling=sampling)
        return rows

    test_rows = cached_labels(workdir / f"test-{s['test_problems']}x{s['label_test']}-k{s['k']}-strict.jsonl", label_test)
    step = step_auroc(models, test_rows)
    timings["label_test_s"] = round(time.time() - t0, 1)

    # 4. Best-of-N selection.
    t0 = time.time()
    scores = score_samples(models, samples)
    outcome = {m: auroc(v, [x["correct"] for x in samples]) for m, v in scores.items()}
    bon = best_of_n(samples, scores, per_problem)
    timings["score_s"] = round(time.time() - t0, 1)

    report = {"model": args.model, "task": args.task, "quick": args.quick, "settings": s,
              "train_labels": {"solutions": len(train_rows),
                               "positive_steps": sum(y for r in train_rows for y in r["hard_labels"] if y is not None)
                               / max(1, sum(1 for r in train_rows for y in r["hard_labels"] if y is not None)),
                               "solution_accuracy": sum(bool(r["final_correct"]) for r in train_rows) / max(1, len(train_rows))},
              "training": trained["summaries"], "step_auroc": step, "outcome_auroc": outcome, "best_of_n": bon,
              "sample_accuracy": sum(x["correct"] for x in samples) / len(samples)}
    if args.search:
        t0 = time.time()
        report["search"] = search_compare(policy, task, test_ex[:s["search_problems"]], models["prm"],
                                          samples[:s["search_problems"] * per_problem], per_problem, s)
        timings["search_s"] = round(time.time() - t0, 1)
    timings["total_s"] = round(time.time() - t_start, 1)
    report["timings"] = timings

    out = Path(args.out or workdir / "results.json")
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n## Reward models on {args.model} / {args.task}{' (quick)' if args.quick else ''}\n")
    print(f"Train: {len(train_rows)} labelled solutions of {s['train_problems']} problems (k={s['k']}); "
          f"test: {len(test_ex)} problems x {per_problem} samples (sample accuracy {report['sample_accuracy']:.3f}).\n")
    print("| step-level AUROC (held-out, Math-Shepherd hard labels) | AUROC |\n|---|---|")
    for k in ("prm", "implicit-prm (step reward)", "implicit-prm (value)", "orm (on each prefix)"):
        if k in step:
            print(f"| {k} | {fmt(step[k])} |")
    print(f"\n{step['labelled_steps']} labelled steps of {step['solutions']} solutions, "
          f"{step['positive_fraction']:.1%} positive.\n")
    print("| outcome-level AUROC | AUROC |\n|---|---|")
    for k, v in outcome.items():
        print(f"| {k} | {fmt(v)} |")
    ns = [n for n in NS if n <= per_problem]
    print("\n| best-of-N accuracy | " + " | ".join(f"N={n}" for n in ns) + " |\n" + "|---" * (len(ns) + 1) + "|")
    for m, row in bon.items():
        print(f"| {m} | " + " | ".join(fmt(row.get(n)) for n in ns) + " |")
    if args.search:
        sr = report["search"]
        print("\n| search on " + f"{s['search_problems']} problems | accuracy | generated tokens / problem |\n|---|---|---|")
        for n, v in sr["self_consistency"].items():
            print(f"| self-consistency N={n} | {fmt(v['accuracy'])} | {v['tokens']:.0f} |")
        for r in sr["prm_search"]:
            extra = f"width={r['width']}" if r["strategy"] == "rebase" else f"beams={r['beams']}"
            print(f"| {r['strategy']} {extra} pick={r['pick']} prm-{r['aggregation']} | {fmt(r['accuracy'])} | "
                  f"{r['tokens']:.0f} |")
        ratio = sr["token_ratio"]
        print(f"\nSelf-consistency's best: {fmt(sr['self_consistency'][sr['sc_best_n']]['accuracy'])} at "
              f"N={sr['sc_best_n']}. " + (f"Cheapest PRM search reaching it uses {ratio:.2f}x its tokens "
                                           f"({'meets' if ratio <= 0.5 else 'misses'} the <= 0.5x target)."
                                           if ratio is not None else "No PRM search configuration reached it."))
    print(f"\ntimings: {timings}; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
