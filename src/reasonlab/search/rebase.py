"""REBASE: reward-balanced tree search (Wu et al. 2024, "Inference Scaling Laws: An Empirical Analysis
of Compute-Optimal Inference for Problem-Solving with Language Models").

The search keeps a budget ``B`` of solutions still to be found (``width`` at the start). At depth 0,
``B`` first steps are sampled. At each depth the scorer rates every new node; each finished
solution lowers ``B`` by one; every open node ``j`` then gets

    W_j = round(B * softmax(R_j / T_b))                      (REBASE, eq. 1)

children, where ``R_j`` is its score and ``T_b`` the balance temperature: good partial solutions
are explored more, poor ones are dropped (0 children), and the total number of children stays ``B``.
No rollouts: the scorer's rating of the partial solution is the only guidance. The search ends when
``B`` reaches 0, nothing is open, or the token budget cannot fund another step; the answer is picked
among the finished solutions by weighted majority vote (the paper's choice) or by best score.

Rounding: ``round`` of each share does not in general sum to ``B`` (e.g. three equal shares of 2).
:func:`rebase_allocation` uses largest-remainder rounding instead: every node first gets the floor of
its share, and the leftover children go to the largest fractional parts (ties: higher score, then
earlier node). Each node gets its share rounded down or up, and the total is exactly ``B``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
class RebaseConfig(StepOptions):
    """REBASE: children per node in proportion to softmax(score / T_b), summing to the remaining width."""

    width: int = 8
    """B: first steps sampled, and finished solutions to collect."""
    balance_temperature: float = 0.2
    """T_b: lower concentrates children on the best-rated nodes, higher spreads them evenly."""
    pick: str = "vote"
    """Final pick among finished solutions: vote (weighted majority vote) or best (highest score)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1 or self.balance_temperature <= 0:
            raise ValueError("need width >= 1 and balance_temperature > 0")
        if self.pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {self.pick!r}")


def rebase_allocation(scores: Sequence[float | None], budget: int, temperature: float) -> list[int]:
    """Children per node: ``round(budget * softmax(scores / temperature))``, summing to ``budget`` exactly.

    Unrated nodes (None, NaN) get no share unless no node is rated (then shares are equal).
    Largest-remainder rounding (module docstring) makes the sum exact.
    """
    if budget < 0 or temperature <= 0:
        raise ValueError("need budget >= 0 and temperature > 0")
    if not scores:
        return []
    r = [rank_value(s) for s in scores]
    top = max(r)
    if top == -math.inf:
        weights = [1.0] * len(r)
    else:  # subtract the max before exp: softmax is shift-invariant and this cannot overflow
        weights = [math.exp((x - top) / temperature) if x != -math.inf else 0.0 for x in r]
    total = sum(weights)
    shares = [budget * w / total for w in weights]
    alloc = [math.floor(s) for s in shares]
    left = budget - sum(alloc)
    order = sorted(range(len(r)), key=lambda j: (-(shares[j] - alloc[j]), -r[j], j))
    for j in order[:left]:
        alloc[j] += 1
    return alloc


class Rebase(Strategy):
    name = "rebase"
    Config = RebaseConfig

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg = self.config
        left = cfg.width
        parents, counts = [0], [cfg.width]
        finished: list[Candidate] = []
        open_cands: list[Candidate] = []
        for depth in range(cfg.max_steps):
            new = expand(ctx, parents, counts, cfg)
            if not new:  # the budget cannot fund another step
                break
            cands = score_nodes(ctx, new, cfg.separator)
            done = [c for c in cands if c.finished]
            finished += done
            left -= len(done)  # B shrinks by one per finished solution
            open_cands = [c for c in cands if not c.finished]
            if left <= 0 or not open_cands:
                break
            alloc = rebase_allocation([c.score for c in open_cands], left, cfg.balance_temperature)
            for c, k in zip(open_cands, alloc):
                ctx.tree[c.node].meta["allotted"] = k
                if k == 0:
                    ctx.tree[c.node].meta["pruned"] = True
            parents = [c.node for c, k in zip(open_cands, alloc) if k > 0]
            counts = [k for k in alloc if k > 0]
        if finished:
            return finished[PICKS[cfg.pick](finished)].node, finished
        if open_cands:
            return open_cands[argmax([c.score for c in open_cands])].node, finished
        return 0, finished
