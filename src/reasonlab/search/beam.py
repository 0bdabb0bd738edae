"""Step-level beam search guided by a scorer (as in Snell et al. 2024, "Scaling LLM Test-Time Compute
Optimally..." and Hugging Face's search-and-learn).

``beams = N`` first steps are sampled. Then, at every depth, the scorer rates the new steps' partial
solutions; finished solutions leave the beam for the pool of completed ones; of the unfinished, the
top ``N / M`` (``width = M``) survive and each is expanded ``M`` ways, which makes ``N`` new steps
again. The search ends when ``N`` solutions are complete, nothing is left open, the step limit is
reached, or the budget cannot fund another step. The answer is picked among the completed solutions
by score (``best``) or weighted vote (``vote``); if none completed, the best-rated partial one.

A step ends at ``separator`` (default a blank line) or, with ``step_tokens = k``, every k tokens
(Marco-o1's "mini-steps", Zhao et al. 2024). Scores rate the whole path to a node; a process reward
model aggregates its step scores (``scorers.PRMScorer``). Steps that were not kept carry
``meta["pruned"]`` in the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonlab.search.base import (
    PICKS,
    Candidate,
    SearchContext,
    StepOptions,
    Strategy,
    argmax,
    expand,
    rank_value,
    score_nodes,
)


@dataclass(frozen=True)
class BeamConfig(StepOptions):
    """Step-level beam search: N beams, each survivor expanded M ways."""

    beams: int = 8
    """N: steps sampled per depth, and the number of completed solutions to stop at."""
    width: int = 2
    """M: expansions per survivor; the scorer keeps the top N/M partial solutions."""
    pick: str = "best"
    """Final pick among completed solutions: best (highest score) or vote (weighted majority vote)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.width <= self.beams:
            raise ValueError(f"need 1 <= width <= beams, got width={self.width} beams={self.beams}")
        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {self.pick!r}")


def top_k(scores: list[float | None], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first (ties: earlier first; unrated last)."""
    return sorted(range(len(scores)), key=lambda i: (-rank_value(scores[i]), i))[:k]


class BeamSearch(Strategy):
    name = "beam"
    Config = BeamConfig

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg = self.config
        keep = max(1, cfg.beams // cfg.width)
        parents, counts = [0], [cfg.beams]
        completed: list[Candidate] = []
        open_cands: list[Candidate] = []
        for depth in range(cfg.max_steps):
            new = expand(ctx, parents, counts, cfg)
            if not new:  # the budget cannot fund another step
                break
            cands = score_nodes(ctx, new, cfg.separator)
            completed += [c for c in cands if c.finished]
            open_cands = [c for c in cands if not c.finished]
            if len(completed) >= cfg.beams or not open_cands:
                break
            survivors = [open_cands[i] for i in top_k([c.score for c in open_cands], keep)]
            kept = {c.node for c in survivors}
            for c in open_cands:
                if c.node not in kept:
                    ctx.tree[c.node].meta["pruned"] = True
            parents, counts = [c.node for c in survivors], [cfg.width] * len(survivors)
        if completed:
            return completed[PICKS[cfg.pick](completed)].node, completed
        if open_cands:
            return open_cands[argmax([c.score for c in open_cands])].node, completed
        return 0, completed
