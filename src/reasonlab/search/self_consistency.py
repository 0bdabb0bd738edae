"""Self-consistency (Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning").

Sample ``n`` solutions and answer with the most common final answer. Answers are grouped by the
task's ``answer_key``, so mathematically equal answers (``1/2`` and ``0.5``) are one vote; samples
without an answer do not vote, nor do samples cut off by the token limit while any sample finished;
ties go to the answer seen first. The chosen solution is the first
sample carrying the winning answer. No scorer is used.

With ``n=0`` it samples in rounds of ``batch`` until the budget can fund no more samples, which is
how a scaling curve spends each budget. The tree is the root with one leaf per sample; each leaf's
``meta["votes"]`` is the size of its answer's group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from reasonlab.search.base import (
    Candidate,
    SamplingOptions,
    SearchContext,
    Strategy,
    add_solutions,
    draw_samples,
    pick_whole,
    whole_indices,
)


@dataclass(frozen=True)
class SelfConsistencyConfig(SamplingOptions):
    """Self-consistency: n samples, majority vote over their answers."""

    n: int = 8
    """Samples; 0 means as many as the budget affords (in rounds of `batch`)."""
    batch: int = 8
    """Samples per generate call when n is 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 0 or self.batch < 1:
            raise ValueError(f"need n >= 0 and batch >= 1, got n={self.n} batch={self.batch}")


class SelfConsistency(Strategy):
    name = "sc"
    Config = SelfConsistencyConfig

    def needs_scorer(self) -> bool:
        return False

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg = self.config
        params = cfg.sampling(stop=ctx.task.stop)
        cands = add_solutions(ctx, 0, draw_samples(ctx, ctx.prefix, cfg.n, cfg.batch, params))
        if not cands:
            return 0, []
        # Only finished samples vote (unless none finished): a cut-off one may hold a truncated answer.
        whole = set(whole_indices(ctx.tree, cands))
        votes = Counter(cands[i].key for i in whole if cands[i].key is not None)
        for i, c in enumerate(cands):
            ctx.tree[c.node].meta["votes"] = votes.get(c.key, 0) if i in whole else 0
        return cands[pick_whole(ctx.tree, cands, "majority")].node, cands
