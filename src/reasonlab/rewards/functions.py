"""Reward functions in the TRL shape, and the weighted set of them an RL trainer scores with.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``: ``prompts`` and
``completions`` are per-sample lists (completion texts), ``columns`` carry per-sample lists of
anything else (here always ``example=[Example, ...]``, plus the example's ``answer``). ``None``
means the function does not apply to that sample: the weighted total then uses only the functions
that returned a number. This is TRL's convention, so a TRL reward function works unchanged.

- :func:`format_reward`: DeepSeek-R1's format reward for ``<think>…</think><answer>…</answer>``.
- :class:`TaskReward`: a task's verifier as a reward (1.0 correct, 0.0 wrong or unparsable). A
  verifier ``timeout`` or ``error`` is ``None`` (no reward either way) and is counted, never a 0.
- :class:`RewardSet`: named, weighted functions scored together, with per-function values kept for
  the metrics. A function that raises is reported by name (``on_error="raise"`` stops the run with
  one clear message; ``"skip"`` reports it and scores the batch without it).
"""

from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from reasonlab.errors import ReasonlabError, UsageError
from reasonlab.types import RewardResult, Status

RewardFn = Callable[..., "list[float | None]"]

_FORMAT_RE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


def format_reward(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 when the completion is exactly ``<think>reasoning</think><answer>answer</answer>``, else 0.0.

    Both blocks must be non-empty and appear once, with nothing outside them but whitespace: a bare
    answer, an empty think block or a second answer block gets 0 (R1's format reward, made strict
    so that it cannot be collected without reasoning).
    """
    out = []
    for c in completions:
        m = _FORMAT_RE.match(c)
        ok = (m is not None and m["think"].strip() != "" and m["answer"].strip() != ""
              and c.count("<think>") == 1 and c.count("<answer>") == 1)
        out.append(1.0 if ok else 0.0)
    return out


class TaskReward:
    """A task's verifier as a TRL-shaped reward: 1.0 correct, 0.0 wrong/unparsable, None on failure.

    ``results(examples, completions)`` returns the full :class:`RewardResult` objects, which the
    trainer uses for accuracy and for counting verifier timeouts and errors.
    """

    def __init__(self, task: Any):
        self.task = task
        self.__name__ = "accuracy"

    def results(self, examples: Sequence[Any], completions: Sequence[str]) -> list[RewardResult]:
        return self.task.score_many(list(examples), list(completions))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float | None]:
        if "example" not in columns:
            raise UsageError("TaskReward needs the example column (example=[Example, ...])")
        return [to_value(r) for r in self.results(columns["example"], completions)]


def to_value(result: RewardResult) -> float | None:
    """A verifier result as a reward: its value, or None when the check itself failed."""
    if result.status in (Status.TIMEOUT, Status.ERROR):
        return None
    return result.value


@dataclass
class RewardScores:
    """What one batch scored. ``per_function[name][i]`` is None where the function skipped sample i."""

    total: list[float | None]
    per_function: dict[str, list[float | None]]
    results: list[RewardResult] | None = None
    """The task verifier's results, when the set holds a :class:`TaskReward`."""
    errors: dict[str, str] = field(default_factory=dict)
    """Functions that raised (``on_error="skip"``): name -> one-line message."""


def reward_metrics(batches: Sequence[RewardScores]) -> dict[str, float]:
    """Per-step reward metrics over one or more scored batches (e.g. dynamic-sampling rounds).

    ``reward/<name>``: the function's mean over the samples it scored; ``reward/<name>/missing``:
    samples it skipped (None); ``reward/<name>/errors``: batches in which it raised (``on_error="skip"``);
    ``accuracy``, ``verifier_timeouts``, ``verifier_errors``: from the task verifier's results.
    """
    got: dict[str, list[float]] = {}
    out: dict[str, float] = {}
    results: list[RewardResult] = []
    for scores in batches:
        for name, vals in scores.per_function.items():
            scored = [v for v in vals if v is not None]
            got.setdefault(name, []).extend(scored)
            out[f"reward/{name}/missing"] = out.get(f"reward/{name}/missing", 0) + len(vals) - len(scored)
        for name in scores.errors:
            out[f"reward/{name}/errors"] = out.get(f"reward/{name}/errors", 0) + 1
        results.extend(scores.results or [])
    for name, vals in got.items():
        out[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
    if results:
        out["accuracy"] = sum(r.status is Status.OK for r in results) / len(results)
        out["verifier_timeouts"] = sum(r.status is Status.TIMEOUT for r in results)
        out["verifier_errors"] = sum(r.status is Status.ERROR for r in results)
    return out


class RewardError(ReasonlabError):
    """A reward function raised; the message names it."""


def failure_message(what: str, e: BaseException) -> str:
    """One line naming a failed reward function (``what``), the error and where it was raised."""
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{what} failed: {type(e).__name__}: {e} ({where.filename}:{where.lineno})"


@dataclass
class RewardSet:
    """Weighted reward functions: ``total_i = sum_f w_f * f_i`` over the functions that scored sample i."""

    functions: dict[str, RewardFn]
    weights: dict[str, float] = field(default_factory=dict)
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if not self.functions:
            raise UsageError("no reward functions")
        unknown = set(self.weights) - set(self.functions)
        if unknown:
            raise UsageError(f"weights given for unknown reward functions: {', '.join(sorted(unknown))}")
        if self.on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be raise or skip, got {self.on_error!r}")

    def score(self, prompts: Sequence[Any], completions: Sequence[str], examples: Sequence[Any]) -> RewardScores:
        n = len(completions)
        columns = {"example": list(examples), "answer": [getattr(e, "answer", None) for e in examples]}
        per: dict[str, list[float | None]] = {}
        results = None
        errors: dict[str, str] = {}
        for name, fn in self.functions.items():
            try:
                if isinstance(fn, TaskReward):
                    results = fn.results(examples, completions)
                    vals: list[float | None] = [to_value(r) for r in results]
                else:
                    vals = list(fn(list(prompts), list(completions), **columns))
                if len(vals) != n:
                    raise ValueError(f"returned {len(vals)} values for {n} completions")
                for v in vals:
                    if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                        raise ValueError(f"returned {v!r}; rewards must be finite numbers or None")
            except Exception as e:  # noqa: BLE001 - a user function may raise anything; we name it
                msg = failure_message(f"reward function {name!r}", e)
                if self.on_error == "raise":
                    raise RewardError(msg) from e
                errors[name] = msg
                vals = [None] * n
            per[name] = [None if v is None else float(v) for v in vals]
        total: list[float | None] = []
        for i in range(n):
            parts = [(self.weights.get(k, 1.0), v[i]) for k, v in per.items() if v[i] is not None]
            total.append(sum(w * x for w, x in parts) if parts else None)
        return RewardScores(total, per, results, errors)


def build_reward_set(spec: str, task: Any, on_error: str = "raise") -> RewardSet:
    """A reward set from ``"name[=weight],..."`` with names ``accuracy``, ``format``, ``orm:DIR`` / ``prm:DIR[@how]``
    (a trained reward model, step scores aggregated by ``how``), or ``module:function``.

    ``module:function`` imports any TRL-shaped function, e.g. ``mypkg.rewards:length_penalty``.
    """
    import importlib

    functions: dict[str, RewardFn] = {}
    weights: dict[str, float] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, weight = part, 1.0
        if "=" in part:
            name, w = part.rsplit("=", 1)
            try:
                weight = float(w)
            except ValueError as e:
                raise UsageError(f"reward weight in {part!r} is not a number") from e
        if name == "accuracy":
            functions[name] = TaskReward(task)
        elif name == "format":
            functions[name] = format_reward
        elif name.startswith(("orm:", "prm:")):  # a trained reward model: orm:DIR or prm:DIR[@min|last|...]
            from reasonlab.rewards.reward_model import RewardModelReward, load_reward_model

            path, _, how = name[4:].partition("@")
            functions[name] = RewardModelReward(load_reward_model(path), how or "min")
        elif ":" in name:
            mod, _, attr = name.partition(":")
            try:
                functions[name] = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as e:
                raise UsageError(f"cannot import reward function {name!r}: {e}") from e
        else:
            raise UsageError(f"unknown reward {name!r}; use accuracy, format, orm:DIR, prm:DIR or module:function")
        weights[name] = weight
    return RewardSet(functions, weights, on_error)
