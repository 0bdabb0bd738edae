"""Greedy decoding / chain-of-thought: one solution, the most likely token at each step.

The baseline every other strategy is measured against: it costs one generation, and on ``tiny``'s
arithmetic task it is also the strongest single sample (sampling at T=0.8 is less accurate per
sample). Its tree is the root and one leaf. It uses no scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonlab.search.base import Candidate, SearchContext, Strategy, add_solutions
from reasonlab.types import SamplingParams


@dataclass(frozen=True)
class GreedyConfig:
    """Greedy decoding: one solution, temperature 0."""

    max_new_tokens: int = 256
    """Longest solution, in tokens (the budget caps it further)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class Greedy(Strategy):
    name = "greedy"
    Config = GreedyConfig

    def needs_scorer(self) -> bool:
        return False

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=self.config.max_new_tokens,
                                stop=tuple(ctx.task.stop))
        cands = add_solutions(ctx, 0, ctx.generate([ctx.prefix], params)[0])
        return (cands[0].node if cands else 0), cands
