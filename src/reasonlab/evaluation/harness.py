"""``reasonlab eval``: a model x a task x sampling, measured, resumable.

For each batch of examples: generate ``n`` completions per prompt, score each with the task's
verifier, and append one JSONL line per example to ``OUT/samples.jsonl`` (prompt, completions,
extracted answers, reward statuses). The summary (``OUT/summary.json``) is recomputed from that file,
so a run that was interrupted (Ctrl-C, crash, kill) keeps everything written so far and the same
command resumes where it stopped. Batches are fixed slices of the example list and each is seeded
from ``seed`` and its first example's index, so a resumed run samples what an uninterrupted run
would have.

Run::

    reasonlab eval                                   # smollm2 on the default task, greedy
    reasonlab eval --model tiny --task arith --n 8 --limit 200
    reasonlab eval --model smollm2 --task gsm8k --n 8 --temperature 0.7 --out runs/gsm8k-maj8
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonlab import config as config_lib
from reasonlab.errors import UsageError
from reasonlab.evaluation.metrics import ks_for, maj_at_k, majority, pass_at_k, voting_keys
from reasonlab.types import SamplingParams, Status

#: The default task: a reasoning-gym arithmetic task the built-in smollm2 partly solves (see
#: BENCHMARKS.md): two-term sums, prompted few-shot. Asked to "reason step by step", the 135M model
#: talks itself out of right sums (6% on these problems); with three worked examples it answers a
#: third of them, in a minute on 2 CPU cores.
DEFAULT_TASK = "rg:basic_arithmetic"
DEFAULT_TASK_OPTIONS = {"prompt_format": "fewshot", "num_fewshot": 3, "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                                   "operators": ["+"], "allow_parentheses": False,
                                   "allow_negation": False}}


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a model on a task: greedy, or n samples per problem (pass@k, maj@k)."""

    model: str = "smollm2"
    """Model: a built-in name (smollm2, tiny), a local checkpoint dir or .gguf file, or openai:<url>[#model]."""
    task: str = DEFAULT_TASK
    """Task spec: gsm8k[:path], math:<path>, rg:<dataset>, humaneval, jsonl:<path>, hf:<dataset>, arith."""
    task_options: str = ""
    """Task options as YAML/JSON, e.g. '{prompt_format: think, config: {min_terms: 3}}'. Empty: the task's
    defaults (for the default task, an easy basic_arithmetic config)."""
    backend: str = "auto"
    """Policy backend: auto, hf (transformers), llamacpp, openai."""
    n: int = 1
    """Completions per problem."""
    temperature: float | None = None
    """Sampling temperature; default 0 (greedy) for n=1 and 0.8 for n>1."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0 disables)."""
    max_new_tokens: int = 384
    """Longest completion, in tokens."""
    limit: int | None = 100
    """Evaluate the first this many problems of the split; none for all."""
    split: str = "test"
    """Which split of the task to evaluate."""
    out: str = ""
    """Run directory; default runs/eval/<model>-<task>-n<n>. Re-running with the same out resumes."""
    seed: int = 0
    """Sampling seed: the same seed gives the same completions."""
    batch_size: int = 16
    """Problems per generation call (and per write to disk)."""
    device: str = "auto"
    """Device for the transformers backend: auto, cpu, cuda."""
    dtype: str = "auto"
    """Weights dtype for the transformers backend: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16,
    float16. On a CPU with bf16 units (AVX512-BF16, AMX) bfloat16 samples smollm2 1.2-1.3x faster at batch 64
    (BENCHMARKS, generation); it changes the model's numbers a little, so answers can differ from float32's."""
    resume: bool = True
    """Continue a run found in out; with --no-resume an existing run directory is refused."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or none for all), got {self.limit}")
        self.sampling()  # the sampling settings' own checks: temperature >= 0, top_p in (0, 1], top_k >= 0, ...

    def sampling(self) -> SamplingParams:
        temperature = self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 0.8)
        return SamplingParams(n=self.n, temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(self.model).name}-{self.task}-n{self.n}")
        return Path("runs") / "eval" / slug


#: Fields that do not change the samples or their scores; anything else must match to resume.
_RESUMABLE_DIFFS = {"out", "resume", "batch_size", "device", "limit"}


def task_options(cfg: EvalConfig) -> dict[str, Any]:
    """The task's options: ``cfg.task_options`` parsed, or the default task's own options when it is empty."""
    if not cfg.task_options.strip():
        return dict(DEFAULT_TASK_OPTIONS) if cfg.task == DEFAULT_TASK else {}
    return config_lib.parse_mapping(cfg.task_options, "--task-options")


def _check_resumable(out: Path, cfg: EvalConfig) -> None:
    import yaml

    stored = out / "config.yaml"
    if not stored.exists():
        return
    old = yaml.safe_load(stored.read_text()) or {}
    new = config_lib.to_dict(cfg)
    diffs = sorted(k for k in new if k not in _RESUMABLE_DIFFS and old.get(k) != new[k])
    if diffs:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diffs)
        raise UsageError(f"{out} holds an eval run with other settings ({shown}); pass another --out "
                         "or delete that directory")


def example_record(example, completions, results, task) -> dict[str, Any]:
    keys = [task.answer_key(r.extracted) for r in results]
    correct = [r.correct for r in results]
    finished = [c.finish_reason != "length" for c in completions]
    maj_key, maj_count = majority(voting_keys(keys, finished))
    # Show the winning answer as the model wrote it (its first occurrence), not its vote key.
    maj_text = next((r.extracted for r, k in zip(results, keys) if k == maj_key), None) if maj_key is not None else None
    return {
        "id": example.id,
        "prompt": example.prompt,
        "answer": example.answer,
        "completions": [
            {**c.to_dict(), "extracted": r.extracted, "status": r.status.value, "reward": r.value,
             "details": r.details} for c, r in zip(completions, results)
        ],
        "n_correct": sum(correct),
        "majority_answer": maj_text,
        "majority_count": maj_count,
        "majority_correct": maj_at_k(keys, correct, len(keys), finished),
        "answer_keys": [None if k is None else str(k) for k in keys],
    }


def summarize(records: list[dict[str, Any]], n: int, gen_seconds: float, wall_seconds: float) -> dict[str, Any]:
    """Aggregate per-example records into the summary (pass@k, maj@k, accuracy, tokens, speed)."""
    m = len(records)
    summary: dict[str, Any] = {"n_examples": m, "n_samples": n}
    if m == 0:
        return summary | {"accuracy": None}
    correct = [[c["status"] == Status.OK.value for c in r["completions"]] for r in records]
    finished = [[c["finish_reason"] != "length" for c in r["completions"]] for r in records]
    summary["accuracy"] = sum(sum(c) / len(c) for c in correct) / m
    for k in ks_for(n):
        summary[f"pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / m
        summary[f"maj@{k}"] = sum(maj_at_k(r["answer_keys"], c, k, f) for r, c, f in zip(records, correct, finished)) / m
    statuses: dict[str, int] = {}
    for r in records:
        for c in r["completions"]:
            statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    gen_tokens = sum(c["completion_tokens"] for r in records for c in r["completions"])
    summary.update({
        "status_counts": statuses,
        "tokens_generated": gen_tokens,
        "prompt_tokens": sum(r["completions"][0]["prompt_tokens"] for r in records),
        "truncated_fraction": sum(c["finish_reason"] == "length" for r in records for c in r["completions"])
        / (m * n),
        "generation_seconds": round(gen_seconds, 3),
        "tokens_per_second": round(gen_tokens / gen_seconds, 2) if gen_seconds > 0 else None,
        "wall_seconds": round(wall_seconds, 3),
    })
    return summary


def run_eval(cfg: EvalConfig, *, policy=None, task=None, console=None) -> dict[str, Any]:
    """Run (or resume) an evaluation and return its summary. ``policy``/``task`` may be given as objects."""
    from rich.console import Console

    from reasonlab.tasks import load_task

    console = console or Console(stderr=True)
    out = cfg.out_dir()
    if out.exists() and (out / "config.yaml").exists():
        if not cfg.resume:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or another --out")
        _check_resumable(out, cfg)
    sampling = cfg.sampling()
    own_task = task is None
    task = task or load_task(cfg.task, **task_options(cfg))
    try:
        return _run(cfg, out, sampling, task, policy, console)
    finally:
        if own_task:
            task.close()


def _run(cfg: EvalConfig, out: Path, sampling: SamplingParams, task, policy, console) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reasonlab.policies import hf_options, load_policy
    from reasonlab.runtime import RunDir

    examples = task.examples(cfg.split, cfg.limit)
    if not examples:
        raise UsageError(f"task {cfg.task!r} has no examples in split {cfg.split!r}")
    run = RunDir(out, config=cfg, resume=True)
    done = {r["id"]: r for r in run.read_jsonl("samples.jsonl")} if (out / "samples.jsonl").exists() else {}
    state = run.read_json("state.json") if (out / "state.json").exists() else {}
    gen_seconds = float(state.get("generation_seconds", 0.0))
    wall_before = float(state.get("wall_seconds", 0.0))
    todo = [i for i, e in enumerate(examples) if e.id not in done]
    t0 = time.time()
    stops = tuple(getattr(task, "stop", ()) or ())
    sampling = sampling.replace(stop=stops)
    own_policy = policy is None

    def write_summary(complete: bool) -> dict[str, Any]:
        recs = [done[e.id] for e in examples if e.id in done]
        summary = summarize(recs, cfg.n, gen_seconds, wall_before + time.time() - t0)
        summary.update({"model": cfg.model, "task": cfg.task, "split": cfg.split, "complete": complete,
                        "sampling": dataclasses.asdict(sampling)})
        run.write_json("summary.json", summary)
        run.write_json("state.json", {"generation_seconds": gen_seconds,
                                      "wall_seconds": wall_before + time.time() - t0})
        return summary

    if todo:
        if policy is None:
            policy = load_policy(cfg.model, cfg.backend, **hf_options(cfg.device, cfg.dtype))
        progress = Progress(TextColumn("[bold]eval[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("acc {task.fields[acc]}"), TextColumn("{task.fields[tps]} tok/s"),
                            TimeElapsedColumn(), console=console, transient=False)
        try:
            with progress:
                bar = progress.add_task("eval", total=len(examples), completed=len(examples) - len(todo),
                                        acc="-", tps="-")
                # Fixed batches over the full example list: the seed of a batch depends only on its
                # position, so resuming reproduces what an uninterrupted run would have sampled.
                starts = sorted({(i // cfg.batch_size) * cfg.batch_size for i in todo})
                for s in starts:
                    batch = [examples[i] for i in range(s, min(s + cfg.batch_size, len(examples)))
                             if examples[i].id not in done]
                    seeded = sampling.replace(seed=None if sampling.seed is None else sampling.seed + s)
                    tg = time.time()
                    comps = policy.generate([e.prompt for e in batch], seeded)
                    gen_seconds += time.time() - tg
                    flat_ex = [e for e in batch for _ in range(cfg.n)]
                    results = task.score_many(flat_ex, [c.text for c in comps])
                    for j, e in enumerate(batch):
                        rec = example_record(e, comps[j * cfg.n:(j + 1) * cfg.n],
                                             results[j * cfg.n:(j + 1) * cfg.n], task)
                        run.append_jsonl("samples.jsonl", rec)
                        done[e.id] = rec
                    partial = summarize(list(done.values()), cfg.n, gen_seconds, 0.0)
                    progress.update(bar, advance=len(batch), acc=f"{partial['accuracy']:.1%}",
                                    tps=f"{partial['tokens_per_second'] or 0:.0f}")
                    write_summary(complete=False)
        except KeyboardInterrupt as e:
            write_summary(complete=False)
            # The CLI prints this as its one line about the interruption.
            raise KeyboardInterrupt(f"{len(done)}/{len(examples)} examples saved in {out}; "
                                    "run the same command again to resume") from e
        finally:
            if own_policy and policy is not None:
                policy.close()
    return write_summary(complete=True)


def print_summary(summary: dict[str, Any], out: Path, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{summary.get('model')} on {summary.get('task')} ({summary.get('split')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, val in summary.items():
        if key in ("model", "task", "split", "sampling", "status_counts"):
            continue
        if isinstance(val, float):
            val = f"{val:.4f}" if key.startswith(("pass@", "maj@", "accuracy", "trunc")) else f"{val:.1f}"
        table.add_row(key, str(val))
    table.add_row("statuses", json.dumps(summary.get("status_counts", {})))
    console.print(table)
    console.print(f"results in {out}/ (summary.json, samples.jsonl, config.yaml)")


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.parse(EvalConfig, argv, prog="reasonlab eval")
    summary = run_eval(cfg)
    print_summary(summary, cfg.out_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
