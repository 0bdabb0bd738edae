"""The task interface: where problems come from, how they are prompted, what counts as correct.

A task yields :class:`~reasonlab.types.Example` objects whose ``prompt`` is already formatted in the
task's prompt format, and scores a completion's text against an example with a
:class:`~reasonlab.types.RewardResult`. ``answer_key`` maps an extracted answer to a hashable key so
that equivalent answers (``1/2`` and ``0.5``) fall into one majority-vote group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Hashable, Sequence

from reasonlab.types import Example, RewardResult


class Task(ABC):
    name: str = "task"
    #: Stop strings the prompt format implies (e.g. ``("</answer>",)`` is *not* used: the closing tag
    #: is part of the answer). Policies stop at EOS anyway; this is for formats like plain-text Q/A.
    stop: tuple[str, ...] = ()

    @abstractmethod
    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        """The first ``limit`` examples of ``split`` (all when ``None``), in a stable order."""

    @abstractmethod
    def score(self, example: Example, completion: str) -> RewardResult:
        """Judge one completion text for one example."""

    def score_many(self, examples: Sequence[Example], completions: Sequence[str]) -> list[RewardResult]:
        """Judge many (example, completion) pairs; tasks with a worker pool override this to batch."""
        return [self.score(e, c) for e, c in zip(examples, completions)]

    def answer_key(self, extracted: str | None) -> Hashable | None:
        """Majority-vote key of an extracted answer; ``None`` never wins a vote."""
        if extracted is None:
            return None
        key = " ".join(extracted.split()).strip().lower()
        return key or None

    def use_strict_verifier(self) -> None:
        """Score as a reward must from now on: hedged or ambiguous answers earn nothing. RL rewards and training
        labels call this. Tasks whose verifier has only one reading (arith's exact integer, HumanEval's tests) are
        strict already; answer tasks override it (``tasks/jsonl.py``)."""

    def close(self) -> None:
        """Release worker pools."""
