"""Reasoning steps: cutting a solution into steps, and one score from a solution's step scores.

Pure helpers shared by everything that works per step: process reward models (``reward_model.py``,
``implicit_prm.py``), Math-Shepherd labels (``labels.py``), process rewards for RL (``process.py``)
and the step-level search strategies and PRM scorers (``search``), which import them from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from reasonlab.errors import UsageError


def split_steps(text: str, separator: str) -> tuple[str, ...]:
    """A finished solution cut into non-empty steps at ``separator``."""
    return tuple(s for s in (text.split(separator) if separator else [text]) if s.strip())


def step_spans(text: str, separator: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the steps :func:`split_steps` finds, in order.

    The same pieces with their positions, so that each step's reward can be put on the tokens that
    wrote it (``text[a:b]`` for each span is ``split_steps(text, separator)``).
    """
    if not separator:
        return [(0, len(text))] if text.strip() else []
    spans, pos = [], 0
    for piece in text.split(separator):
        if piece.strip():
            spans.append((pos, pos + len(piece)))
        pos += len(piece) + len(separator)
    return spans


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "last": lambda s: s[-1],
    "min": min,
    "product": math.prod,
    "mean": lambda s: sum(s) / len(s),
}


def aggregate(step_scores: Sequence[float], how: str = "min") -> float:
    """One score for a solution from its step scores: ``last``, ``min``, ``product`` or ``mean``.

    ``min`` and ``product`` are the PRM papers' usual choices (Lightman et al. 2023; Wang et al. 2024);
    ``last`` treats the PRM's last step as an outcome score (Snell et al. 2024 found it works best).
    """
    if how not in AGGREGATIONS:
        raise UsageError(f"unknown step-score aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not step_scores:
        raise ValueError("no step scores to aggregate")
    return float(AGGREGATIONS[how](list(step_scores)))


def aggregate_or_nan(step_scores: Sequence[float], how: str) -> float:
    """:func:`aggregate`, but NaN if any step could not be rated (a cut-off step is not a good step)."""
    if not step_scores or any(math.isnan(x) for x in step_scores):
        return math.nan
    return aggregate(step_scores, how)
