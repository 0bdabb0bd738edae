"""Does an ORM trained on more of the policy's own samples pick right answers within a problem?

``benchmarks/reward_models.py`` found every learned reward model on ``tiny`` near chance *within* a
problem, and best-of-N by the ORM getting worse as N grows. This checks the two obvious remedies on
``arith``:

- ``--objective bce``: the library's ORM (``learn/orm.py``, binary cross-entropy at the last token)
  on many more samples: ``--problems`` x ``--samples`` policy samples at T = 0.8, distinct solutions per
  problem, labelled by the verifier;
- ``--objective pairwise``: a Bradley-Terry loss over (correct, wrong) pairs of the *same* problem,
  ``-log sigmoid(z_correct - z_wrong)`` (the verifier objective of V-STaR, Hosseini et al. 2024), which
  cancels every feature shared by a problem's solutions, so only what separates them can lower it.

Then, on 100 held-out problems x 32 samples: outcome AUROC, mean within-problem AUROC, and best-of-N
accuracy at N = 4..32 against the policy's confidence (mean token log-prob), majority vote and a
single sample, on exactly the same samples.

    python benchmarks/orm_selection.py --objective bce --problems 1500 --samples 16 --steps 800 --batch-size 64
    python benchmarks/orm_selection.py --objective pairwise --problems 800 --samples 16 --steps 600 --batch-size 32
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sample(policy, task, examples, n: int, seed: int):
    from reasonlab.types import SamplingParams

    comps = policy.generate([e.prompt for e in examples],
                            SamplingParams(n=n, temperature=0.8, max_new_tokens=48, stop=tuple(task.stop), seed=seed))
    exs = [examples[c.prompt_index] for c in comps]
    return exs, comps, task.score_many(exs, [c.text for c in comps])


def distinct_rows(exs, comps, results) -> list[dict]:
    """One row per distinct solution of a problem (as the step labeller keeps them)."""
    rows, seen = [], set()
    for e, c, r in zip(exs, comps, results):
        if (e.id, c.text) not in seen:
            seen.add((e.id, c.text))
            rows.append({"id": e.id, "prompt": e.prompt, "completion": c.text, "label": float(r.correct)})
    return rows


def train_pairwise(rows: list[dict], steps: int, pairs_per_step: int, lr: float):
    """A value head on ``tiny`` trained on within-problem (correct, wrong) pairs; returns a scoring function."""
    import torch
    import torch.nn.functional as F

    from reasonlab.learn.sft import load_model
    from reasonlab.rewards.reward_model import RewardModel, RewardModelCard, encode_outcome, pad_batch

    model, tok = load_model("tiny", torch.float32)
    rm = RewardModel(model, tok, RewardModelCard(kind="orm", base_model="tiny", max_length=256))
    by_problem = collections.defaultdict(lambda: ([], []))
    for r in rows:
        by_problem[r["id"]][0 if r["label"] >= 0.5 else 1].append(encode_outcome(tok, r["prompt"], r["completion"]).ids)
    pairs = [(g, b) for good, bad in by_problem.values() for g in good for b in bad]
    if not pairs:
        sys.exit("no problem has both a correct and a wrong solution: nothing to pair")
    print(f"{len(pairs)} within-problem pairs", file=sys.stderr)

    def logits(seqs):
        ids, mask = pad_batch(seqs, tok.pad_token_id)
        z = rm(ids, mask)
        return z[torch.arange(len(seqs)), mask.sum(1) - 1]

    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": lr}, {"params": rm.head.parameters(), "lr": 10 * lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(0)
    for step in range(steps):
        batch = rng.sample(pairs, min(pairs_per_step, len(pairs)))
        z = logits([g for g, _ in batch] + [b for _, b in batch])
        loss = -F.logsigmoid(z[:len(batch)] - z[len(batch):]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(rm.head.parameters()), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} pair loss {loss.item():.4f}", file=sys.stderr)
    rm.eval()

    def score(prompts, texts):
        with torch.no_grad():
            out = []
            for i in range(0, len(texts), 256):
                out += torch.sigmoid(logits([encode_outcome(tok, p, t).ids for p, t in
                                             zip(prompts[i:i + 256], texts[i:i + 256])])).tolist()
            return out
    return score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objective", choices=("bce", "pairwise"), default="bce")
    ap.add_argument("--problems", type=int, default=1500, help="training problems")
    ap.add_argument("--samples", type=int, default=16, help="policy samples per training problem")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64, help="rows (bce) or pairs (pairwise) per step")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--test-problems", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results JSON")
    args = ap.parse_args()

    import torch

    from reward_models import best_of_n  # the sibling benchmark (this directory is on sys.path)

    from reasonlab.policies import load_policy
    from reasonlab.rewards.reward_model import auroc, load_reward_model
    from reasonlab.tasks import load_task

    torch.set_num_threads(args.threads)
    task, policy = load_task("arith"), load_policy("tiny", device="cpu")
    t0 = time.time()
    rows = distinct_rows(*sample(policy, task, task.examples("train", args.problems), args.samples, seed=1))
    positive = sum(r["label"] for r in rows) / len(rows)
    print(f"{len(rows)} distinct solutions, {positive:.1%} correct ({time.time() - t0:.0f} s)", file=sys.stderr)
    t0 = time.time()
    if args.objective == "bce":
        from reasonlab.learn import orm as orm_lib

        out = "runs/bench-orm-selection/bce"
        shutil.rmtree(out, ignore_errors=True)  # retrained on every run, as reward_models.py does
        summary = orm_lib.train(orm_lib.ORMConfig(
            model="tiny", out=out, max_steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, warmup_steps=20, log_every=100, eval_every=0, save_every=0, eval_fraction=0.05,
            max_seq_len=256, device="cpu", resume=False), rows)
        score = load_reward_model(summary["final_dir"], device="cpu", batch_size=128).score_outcomes
    else:
        score = train_pairwise(rows, args.steps, args.batch_size, args.lr)
    train_s = time.time() - t0

    n_max = 32
    exs, comps, results = sample(policy, task, task.examples("test", args.test_problems), n_max, seed=12345)
    scores = score([e.prompt for e in exs], [c.text for c in comps])
    correct = [r.correct for r in results]
    samples = [{"correct": r.correct, "key": task.answer_key(r.extracted),
                "mean_logprob": sum(c.logprobs) / len(c.logprobs) if c.logprobs else -math.inf}
               for c, r in zip(comps, results)]
    within = [a for p in range(args.test_problems)
              for a in [auroc(scores[p * n_max:(p + 1) * n_max], correct[p * n_max:(p + 1) * n_max])] if not math.isnan(a)]
    # The same selection accuracies as reward_models.py (method -> N -> accuracy), oracle aside.
    bon = {m: row for m, row in best_of_n(samples, {"orm": scores}, n_max).items() if m != "oracle"}
    report = {"objective": args.objective, "train_rows": len(rows), "train_positive": positive,
              "settings": vars(args), "train_s": round(train_s, 1), "outcome_auroc": auroc(scores, correct),
              "within_problem_auroc": sum(within) / len(within), "best_of_n": bon}
    print(f"\n{args.objective} ORM on {len(rows)} distinct solutions of {args.problems} problems "
          f"({positive:.1%} correct), {args.steps} steps, {train_s:.0f} s")
    print(f"held-out {args.test_problems} x {n_max}: outcome AUROC {report['outcome_auroc']:.3f}, "
          f"within-problem AUROC {report['within_problem_auroc']:.3f}\n")
    ns = list(bon["orm"])
    print("| best-of-N | " + " | ".join(f"N={n}" for n in ns) + " |\n|---" + "|---" * len(ns) + "|")
    for m in ("orm", "confidence", "majority", "single sample"):
        print(f"| {m} | " + " | ".join(f"{bon[m][n]:.3f}" for n in ns) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
