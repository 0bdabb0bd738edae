"""MATH-style problems (Hendrycks et al. 2021) from JSONL: competition math with LaTeX answers.

Rows are ``{"problem": ..., "solution": ...}``, the gold answer being the content of the solution's
last ``\\boxed{}``, or ``{"problem": ..., "answer": ...}``; when both are present (MATH-500), the
``answer`` field wins. ``subject``, ``level`` and ``unique_id`` are kept in ``Example.meta``. A row
with no gold answer is a malformed row (DataError with its line number).

Scoring is mathematical equivalence (``rewards.math``), so ``\\frac{1}{2}`` matches ``0.5``.
Few-shot prompts need worked examples from a train split: ``path`` a directory with ``train.jsonl``,
or ``fewshot_path``.

    task = MathTask("math500.jsonl", prompt_format="think")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from reasonlab.tasks.jsonl import Columns, JsonlTask

if TYPE_CHECKING:
    from reasonlab.rewards.math import MathVerifierConfig


class MathTask(JsonlTask):
    """MATH-format JSONL: a file (serves every split) or a directory of ``<split>.jsonl`` files."""

    name = "math"

    def __init__(
        self,
        path: str | os.PathLike,
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        fewshot_path: str | os.PathLike | None = None,
        on_bad: Literal["error", "skip"] = "error",
        verifier: "MathVerifierConfig | None" = None,
    ):
        columns = Columns(
            question="problem",
            answer="answer",
            answer_format="plain",
            solution="solution",
            keep=("subject", "level", "unique_id"),
        )
        self._init(path, columns, prompt_format, num_fewshot, fewshot_path, on_bad, verifier)
