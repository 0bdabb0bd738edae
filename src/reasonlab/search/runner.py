"""``reasonlab search``: strategies x budgets over a task's examples, resumable, aggregated.

For every strategy and every budget (generated tokens per problem) the runner searches each of the
first ``limit`` examples, judges the chosen solution with the task's verifier, appends one JSON line
per (strategy, budget, example) to ``OUT/results.jsonl`` and writes the example's search tree (with
its nodes marked right or wrong by :func:`~reasonlab.search.annotate`) to
``OUT/trees/<strategy>-<budget>/<example>.json``. A greedy baseline runs once per example. At the end
the records are aggregated into one row per strategy x budget (accuracy, mean generated and prompt
tokens, generations, scorer calls, wall time, overhead) and written as ``table.md``/``.csv``/``.json``,
a scaling plot ``scaling.png`` and a self-contained ``report.html`` with a tree viewer
(:mod:`reasonlab.search.report`).

**Resume**: each record carries a fingerprint of what produced it (strategy, budget, resolved
options, scorer); a re-run with the same ``--out`` skips the (fingerprint, example) pairs already on
disk, so adding a budget or a strategy runs only the new work, and changing a strategy's options
reruns only that strategy. Model, task and split must match the stored run.

**Options**: ``--max-new-tokens``, ``--separator``, ``--temperature``, ... apply to every strategy that
has such a setting; ``--options`` (YAML) sets any strategy option, per strategy (``beam: {width: 4}``)
or per strategy and budget (``"rebase@1024": {width: 16}``, which wins). With ``--spend-budget`` (the
default) the parallel strategies (sc, bon, wmv) sample until the budget is spent (``n=0``), which is
how a scaling curve gives each budget its due. ``--scorer`` names the scorer of the strategies that
need one: one name for all, or ``beam=mc-rollout,bon=confidence,*=agreement``; scorer options go in
``--scorer-options '{mc-rollout: {k: 4}}'``. Scorers that read the gold answer (``mc-rollout``,
Math-Shepherd's rollout value, and ``verifier-oracle``) are labelled so in every output.

Run::

    reasonlab search --model tiny --task arith --strategies sc,bon,beam --budgets 128,256,512 \\
        --max-new-tokens 48 --separator '\\n' --limit 20 --out runs/search-tiny
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from reasonlab import config as config_lib
from reasonlab.errors import UsageError
from reasonlab.evaluation.harness import DEFAULT_TASK, task_options
from reasonlab.search import STRATEGIES, Strategy, annotate, make_scorer, make_strategy
from reasonlab.search.scorers import SCORERS, Scorer

#: Scorer of a strategy that needs one when ``--scorer`` does not say: the policy's own confidence
#: (exp mean token log-prob) needs no gold answer and no extra generation, so it is honest by default.
DEFAULT_SCORER = "confidence"
#: Scorers that judge against the gold answer: their rows are labelled, they are not deployable methods.
GOLD_SCORERS = frozenset({"mc-rollout", "verifier-oracle"})
#: Strategies that take ``n=0`` to mean "sample until the budget is spent".
SPENDING = ("sc", "bon", "wmv")
#: SearchConfig fields passed to every strategy whose config has a field of that name.
SHARED_OPTIONS = ("temperature", "max_new_tokens", "separator", "max_step_tokens", "max_steps", "seed")
RESULTS, TREES = "results.jsonl", "trees"
BASELINE = "greedy"


@dataclass(frozen=True)
class SearchConfig:
    """Run search strategies x token budgets on a task: accuracy against tokens, plot, HTML report, trees."""

    model: str = "smollm2"
    """Model: a built-in name (smollm2, tiny), a local checkpoint dir or .gguf file, or openai:<url>[#model]."""
    task: str = DEFAULT_TASK
    """Task spec: gsm8k[:path], math:<path>, rg:<dataset>, jsonl:<path>, hf:<dataset>, arith."""
    task_options: str = ""
    """Task options as YAML/JSON, e.g. '{prompt_format: fewshot}'. Empty: the task's defaults."""
    backend: str = "auto"
    """Policy backend: auto, hf (transformers), llamacpp, openai. Scorers using log-probs need hf or llamacpp."""
    strategies: tuple[str, ...] = ("sc", "bon", "beam", "rebase", "mcts", "revise")
    """Comma-separated strategies: greedy, sc, bon, wmv, beam, rebase, mcts, revise."""
    budgets: tuple[int, ...] = (256, 512, 1024)
    """Comma-separated budgets in generated tokens per problem (scorer rollouts included); never exceeded."""
    scorer: str = ""
    """Scorer of the strategies that need one: a name (confidence, self-eval, agreement, mc-rollout,
    verifier-oracle, rm:PATH) for all, or 'beam=mc-rollout,bon=confidence,*=agreement'. Empty: confidence."""
    scorer_options: str = ""
    """Scorer options as YAML, by scorer name, e.g. '{mc-rollout: {k: 4, max_new_tokens: 64}}'."""
    options: str = ""
    """Strategy options as YAML, by strategy or strategy@budget, e.g. '{beam: {width: 2}, "rebase@1024": {width: 16}}'."""
    max_new_tokens: int = 256
    """Longest solution (and step-search rollout) in tokens; budgets assume each sample may use all of it."""
    separator: str = "\n\n"
    """Step separator of the step-level searches (the escapes \\n, \\t are read); tiny's steps are lines: '\\n'."""
    max_step_tokens: int = 128
    """Longest step in tokens (beam, rebase, mcts)."""
    max_steps: int = 16
    """Deepest solution in steps (beam, rebase, mcts)."""
    temperature: float = 0.8
    """Sampling temperature of every strategy that samples."""
    spend_budget: bool = True
    """sc, bon and wmv sample until the budget is spent (n=0) unless --options sets their n."""
    baseline: bool = True
    """Also run greedy decoding once per problem, as the baseline row."""
    limit: int | None = 50
    """Search the first this many problems of the split; none for all."""
    split: str = "test"
    """Which split of the task to search."""
    out: str = ""
    """Run directory; default runs/search/<model>-<task>. Re-running with the same out resumes."""
    seed: int = 0
    """Search seed: the same seed, options and example give the same samples."""
    device: str = "auto"
    """Device for the transformers backend: auto, cpu, cuda."""
    dtype: str = "auto"
    """Weights dtype for the transformers backend: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16,
    float16. bfloat16 pays on a CPU with bf16 units (AVX512-BF16, AMX); it changes the model's numbers a little."""
    threads: int | None = None
    """torch CPU threads (none: torch's default). On a busy CPU, 1 is often much faster for small models."""
    resume: bool = True
    """Continue a run found in out; with --no-resume an existing run directory is refused."""

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("give at least one strategy")
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive token counts, got {self.budgets}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or none for all), got {self.limit}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / "search" / slug(f"{Path(self.model).name}-{self.task}")


#: Settings that must match to resume a run (anything else is per-record, by fingerprint).
_MUST_MATCH = ("model", "task", "task_options", "backend", "split")


def slug(text: str) -> str:
    """A file-name-safe form of an id (``arith/test/3`` -> ``arith_test_3``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def unescape(text: str) -> str:
    """Read ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` as the characters they stand for: a separator typed on a
    command line arrives as the two characters ``\\`` ``n``."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def _yaml_mapping(text: str, flag: str) -> dict[str, Any]:
    import yaml

    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{flag} is not valid YAML/JSON: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{flag} must map names to option mappings, e.g. '{{beam: {{width: 2}}}}', got {text!r}")
    return {str(k): v for k, v in data.items()}


# ----------------------------------------------------------------------------------------------
# The plan: which strategy, options and scorer each (strategy, budget) cell runs
# ----------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (strategy, budget) of the grid, resolved: the strategy object, its scorer, a fingerprint."""

    strategy_name: str
    budget: int | None
    strategy: Strategy
    scorer_spec: str | None
    scorer: Scorer | None
    fingerprint: str

    @property
    def label(self) -> str:
        """``sc@256``; the greedy baseline is ``greedy``."""
        return self.strategy_name if self.budget is None else f"{self.strategy_name}@{self.budget}"

    @property
    def tree_dir(self) -> str:
        return self.strategy_name if self.budget is None else f"{self.strategy_name}-{self.budget}"

    @property
    def uses_gold(self) -> bool:
        return self.scorer_spec is not None and self.scorer_spec.partition(":")[0] in GOLD_SCORERS


def scorer_choice(spec: str) -> dict[str, str]:
    """Parse ``--scorer``: ``"name"`` (all) or ``"beam=mc-rollout,*=confidence"`` -> {strategy or '*': scorer}."""
    spec = spec.strip()
    if not spec:
        return {"*": DEFAULT_SCORER}
    if "=" not in spec:
        return {"*": spec}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, scorer = (s.strip() for s in part.partition("="))
        if not eq or not name or not scorer:
            raise UsageError(f"--scorer: cannot read {part!r}; write strategy=scorer, e.g. beam=mc-rollout")
        if name != "*" and name not in STRATEGIES:
            raise UsageError(f"--scorer: unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
        out[name] = scorer
    out.setdefault("*", DEFAULT_SCORER)
    return out


def strategy_options(cfg: Any, name: str, budget: int | None, options: dict[str, dict]) -> dict[str, Any]:
    """The options of strategy ``name`` at ``budget``: shared settings < per-strategy < per strategy@budget.

    ``cfg`` is a :class:`SearchConfig` or any config with the :data:`SHARED_OPTIONS` fields and
    ``spend_budget`` (``reasonlab serve``'s).
    """
    if name not in STRATEGIES:
        raise UsageError(f"unknown search strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    known = {f.name for f in fields(STRATEGIES[name].Config)}
    shared = {k: getattr(cfg, k) for k in SHARED_OPTIONS if k in known}
    if "separator" in shared:
        shared["separator"] = unescape(shared["separator"])
    if cfg.spend_budget and name in SPENDING and budget is not None:
        shared["n"] = 0
    if name == BASELINE:
        shared = {k: v for k, v in shared.items() if k == "max_new_tokens"}
    opts = {**shared, **options.get(name, {})}
    if budget is not None:
        opts.update(options.get(f"{name}@{budget}", {}))
    return opts


def plan(cfg: SearchConfig) -> list[Cell]:
    """Every cell of the run, validated before any model is loaded (bad names fail in a second)."""
    options = _yaml_mapping(cfg.options, "--options")
    scorer_opts = _yaml_mapping(cfg.scorer_options, "--scorer-options")
    for key in options:
        name, _, budget = key.partition("@")
        if name not in STRATEGIES or (budget and not budget.isdigit()):
            raise UsageError(f"--options: {key!r} is not a strategy or strategy@budget; strategies: {', '.join(STRATEGIES)}")
    for key in scorer_opts:
        if key.partition(":")[0] not in SCORERS:
            raise UsageError(f"--scorer-options: unknown scorer {key!r}; choose one of {', '.join(SCORERS)}")
    choice = scorer_choice(cfg.scorer)
    scorers: dict[str, Scorer] = {}
    grid: list[tuple[str, int | None]] = [(BASELINE, None)] if cfg.baseline else []
    for name in dict.fromkeys(cfg.strategies):  # keeps order, drops repeats
        if name not in STRATEGIES:
            raise UsageError(f"unknown search strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
        grid += [(name, b) for b in dict.fromkeys(cfg.budgets)]
    cells = []
    for name, budget in grid:
        opts = strategy_options(cfg, name, budget, options)
        strategy = make_strategy(name, **opts)
        spec = choice.get(name, choice["*"]) if strategy.needs_scorer() else None
        if spec is not None and spec not in scorers:
            scorers[spec] = make_scorer(spec, **scorer_opts.get(spec, scorer_opts.get(spec.partition(":")[0], {})))
        ident = {"strategy": name, "budget": budget, "config": config_lib.to_dict(strategy.config),
                 "scorer": spec, "scorer_options": scorer_opts.get(spec, {}) if spec else {}}
        fp = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
        cells.append(Cell(name, budget, strategy, spec, scorers.get(spec) if spec else None, fp))
    return cells


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

def _check_resumable(out: Path, cfg: SearchConfig) -> None:
    import yaml

    stored = out / "config.yaml"
    if not stored.exists():
        return
    old = yaml.safe_load(stored.read_text()) or {}
    new = config_lib.to_dict(cfg)
    diffs = [k for k in _MUST_MATCH if k in old and old[k] != new[k]]
    if diffs:
        shown = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diffs)
        raise UsageError(f"{out} holds a search run with other settings ({shown}); pass another --out "
                         "or delete that directory")


def search_record(cell: Cell, example, result, verdict, tree_path: str) -> dict[str, Any]:
    """One line of results.jsonl: what was searched, what was chosen, whether it is right, what it cost."""
    judged = verdict.value is not None
    return {
        "label": cell.label, "strategy": cell.strategy_name, "budget": cell.budget,
        "scorer": cell.scorer_spec, "uses_gold": cell.uses_gold, "fingerprint": cell.fingerprint,
        "example_id": example.id, "question": example.question, "answer": example.answer,
        "text": result.text, "extracted": result.extracted,
        # A check that failed (timeout, error) is recorded as such, never as a wrong answer.
        "correct": verdict.correct if judged else None, "status": verdict.status.value,
        "compute": result.compute.to_dict(), "nodes": len(result.tree), "tree": tree_path,
    }


def run_search(cfg: SearchConfig, *, policy=None, task=None, console=None) -> list[dict[str, Any]]:
    """Run (or resume) the grid; write results, trees, table, plot and report; return the table rows."""
    from rich.console import Console

    from reasonlab.tasks import load_task

    console = console or Console(stderr=True)
    cells = plan(cfg)  # fails on bad names before anything is loaded or written
    out = cfg.out_dir()
    if (out / "config.yaml").exists():
        if not cfg.resume:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or another --out")
        _check_resumable(out, cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    own_task = task is None
    task = task or load_task(cfg.task, **task_options(cfg))
    try:
        return _run(cfg, cells, out, task, policy, console)
    finally:
        if own_task:
            task.close()


def _run(cfg: SearchConfig, cells: list[Cell], out: Path, task, policy, console) -> list[dict[str, Any]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from reasonlab.policies import hf_options, load_policy
    from reasonlab.runtime import RunDir
    from reasonlab.search import report

    examples = task.examples(cfg.split, cfg.limit)
    if not examples:
        raise UsageError(f"task {cfg.task!r} has no examples in split {cfg.split!r}")
    # Only the _MUST_MATCH settings (checked above) could mix results; the rest is per record, by fingerprint.
    run = RunDir(out, config=cfg, resume=True,
                 harmless_fields=[f.name for f in fields(SearchConfig) if f.name not in _MUST_MATCH])
    done = {(r["fingerprint"], r["example_id"]) for r in run.read_jsonl(RESULTS)}
    todo = [(c, e) for c in cells for e in examples if (c.fingerprint, e.id) not in done]
    own_policy = policy is None
    if todo:
        if policy is None:
            policy = load_policy(cfg.model, cfg.backend, **hf_options(cfg.device, cfg.dtype))
        progress = Progress(TextColumn("[bold]search[/] {task.fields[cell]}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        try:
            with progress:
                bar = progress.add_task("search", total=len(cells) * len(examples),
                                        completed=len(cells) * len(examples) - len(todo), cell="")
                for cell, example in todo:
                    progress.update(bar, cell=cell.label)
                    result = cell.strategy.search(example, policy, task, cell.scorer, budget=cell.budget)
                    verdict = task.score(example, result.text)
                    annotate(result, task, example)  # marks the tree's answers; outside the compute record
                    rel = f"{TREES}/{cell.tree_dir}/{slug(example.id)}.json"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out / rel).write_text(result.tree.to_json())
                    run.append_jsonl(RESULTS, search_record(cell, example, result, verdict, rel))
                    progress.advance(bar)
        except KeyboardInterrupt as e:
            raise KeyboardInterrupt(f"results so far are in {out / RESULTS}; run the same command again to "
                                    "resume") from e
        finally:
            if own_policy and policy is not None:
                policy.close()
    ids = {e.id for e in examples}
    wanted = {c.fingerprint for c in cells}
    # Only the records of this grid and these examples: a changed option leaves older lines behind.
    records = [r for r in run.read_jsonl(RESULTS) if r["fingerprint"] in wanted and r["example_id"] in ids]
    rows = aggregate(records, cells)
    meta = {"model": cfg.model, "task": cfg.task, "split": cfg.split, "examples": len(examples),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    report.write_all(out, rows, records, meta)
    return rows


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------

def aggregate(records: Sequence[dict[str, Any]], cells: Sequence[Cell] | None = None) -> list[dict[str, Any]]:
    """One row per (strategy, budget) in grid order: accuracy and mean compute per problem.

    ``accuracy`` is over the problems whose answer could be checked; ``unjudged`` counts the others
    (a verifier timeout or error), which are never counted as wrong. ``overhead_pct`` is the share of
    wall time outside generation, scoring and answer reading: the search's own cost.
    """
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    order = [c.label for c in cells] if cells is not None else list(by_label)
    rows = []
    for label in order:
        recs = by_label.get(label)
        if not recs:
            continue
        n = len(recs)
        judged = [r for r in recs if r["correct"] is not None]
        comp = [r["compute"] for r in recs]
        mean = {k: sum(c[k] for c in comp) / n for k in comp[0] if isinstance(comp[0][k], (int, float))}

        wall = sum(c["wall_time_s"] for c in comp)
        rows.append({
            "label": label, "strategy": recs[0]["strategy"], "budget": recs[0]["budget"],
            "scorer": recs[0]["scorer"], "uses_gold": recs[0]["uses_gold"], "n": n,
            "accuracy": sum(r["correct"] for r in judged) / len(judged) if judged else None,
            "correct": sum(r["correct"] for r in judged), "unjudged": n - len(judged),
            "generated_tokens": mean["generated_tokens"],
            "max_generated_tokens": max(c["generated_tokens"] for c in comp),
            "prompt_tokens": mean["prompt_tokens"], "generations": mean["generations"],
            "scorer_calls": mean["scorer_calls"], "wall_s": wall / n,
            "generation_s": mean["generation_time_s"], "scorer_s": mean["scorer_time_s"],
            "overhead_pct": 100.0 * sum(c["overhead_s"] for c in comp) / wall if wall > 0 else 0.0,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.parse(SearchConfig, argv, prog="reasonlab search")
    from reasonlab.search import report

    rows = run_search(cfg)
    report.print_table(rows, title=f"{cfg.model} on {cfg.task} ({cfg.split})")
    print(f"results in {cfg.out_dir()}/ (table.md, scaling.png, report.html, results.jsonl, trees/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
