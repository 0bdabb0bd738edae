"""Best-of-N and weighted majority vote, with optional speculative rejection.

* **Best-of-N** (``bon``): sample ``n`` solutions, rate each with the scorer, answer with the
  highest-rated one (Cobbe et al. 2021 used a trained verifier for this).
* **Weighted majority vote** (``wmv``): sum the scores of the solutions that share an answer
  (grouped by ``task.answer_key``) and answer with the heaviest group, taking its best-rated
  solution as the text (Li et al. 2023, "Making Large Language Models Better Reasoners with
  Step-Aware Verifier"). Scores must be non-negative weights.
* **Speculative rejection** (Sun et al. 2024, "Fast Best-of-N Decoding via Speculative Rejection"):
  with ``reject_after = t > 0``, every sample is first generated for only ``t`` tokens; the scorer
  rates the unfinished partial samples, the lowest-rated ``reject_fraction`` of them is dropped, and
  only the survivors are continued to the end. The paper rejects whenever GPU memory fills; here
  there is one rejection point, after the first chunk, which is where most of the saving is.

With ``n=0`` samples are drawn in rounds of ``batch`` until the budget is spent (not combinable
with speculative rejection, which needs the population up front). The tree is the root with one
leaf per sample, or with rejection root -> first chunk -> continuation (rejected chunks carry
``meta["pruned"]``). ``separator`` only says how a solution is cut into steps for process scorers.
The pick is among the samples that finished (a stop string or EOS); one cut off by its token limit
(or by the budget's last, shortened row) wins only when no sample finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reasonlab.search.base import (
    Candidate,
    SamplingOptions,
    SearchContext,
    Strategy,
    add_solutions,
    draw_samples,
    pick_whole,
    rank_value,
)


@dataclass(frozen=True)
class BestOfNConfig(SamplingOptions):
    """Best-of-N by a scorer (or weighted majority vote), optionally with speculative rejection."""

    n: int = 8
    """Samples; 0 means as many as the budget affords (in rounds of `batch`)."""
    batch: int = 8
    """Samples per generate call when n is 0."""
    pick: str = "best"
    """Final pick: best (highest score) or vote (weighted majority vote: sum of scores per answer)."""
    separator: str = "\n\n"
    """Where a solution is cut into steps for process scorers (tiny's steps are lines, "\\n")."""
    reject_after: int = 0
    """Speculative rejection: generate this many tokens, drop the worst partial samples, finish the rest (0: off)."""
    reject_fraction: float = 0.5
    """Fraction of the unfinished partial samples dropped at the rejection point."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pick not in ("best", "vote"):
            raise ValueError(f"pick must be best or vote, got {self.pick!r}")
        if self.n < 0 or self.batch < 1:
            raise ValueError(f"need n >= 0 and batch >= 1, got n={self.n} batch={self.batch}")
        if self.reject_after < 0 or not 0 <= self.reject_fraction < 1:
            raise ValueError("need reject_after >= 0 and 0 <= reject_fraction < 1")
        if self.reject_after and self.n == 0:
            raise ValueError("speculative rejection needs a fixed n (n > 0)")
        if self.reject_after >= self.max_new_tokens:
            raise ValueError(f"reject_after ({self.reject_after}) must be below max_new_tokens ({self.max_new_tokens})")


@dataclass(frozen=True)
class WeightedVoteConfig(BestOfNConfig):
    """Weighted majority vote: the answer whose samples' scores sum highest."""

    pick: str = "vote"
    """Final pick: vote (weighted majority vote: sum of scores per answer) or best (highest score)."""


def rejected(scores: list[float | None], fraction: float) -> set[int]:
    """Indices of the ``floor(fraction * len)`` lowest scores (unrated ones first; ties: later first).

    At least one sample always survives.
    """
    drop = min(math.floor(fraction * len(scores)), len(scores) - 1)
    order = sorted(range(len(scores)), key=lambda i: (rank_value(scores[i]), -i))
    return set(order[:max(drop, 0)])


class BestOfN(Strategy):
    name = "bon"
    Config = BestOfNConfig

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg = self.config
        params = cfg.sampling(stop=ctx.task.stop)
        if cfg.reject_after:
            cands = self._speculative(ctx, params)
        else:
            cands = add_solutions(ctx, 0, draw_samples(ctx, ctx.prefix, cfg.n, cfg.batch, params), cfg.separator)
        if not cands:
            return 0, []
        for c, s in zip(cands, ctx.score(cands)):
            ctx.tree[c.node].score = s
        return cands[pick_whole(ctx.tree, cands, cfg.pick)].node, cands

    def _speculative(self, ctx: SearchContext, params) -> list[Candidate]:
        """Phase 1: n samples of ``reject_after`` tokens; rate the unfinished; continue the best."""
        cfg, tree = self.config, ctx.tree
        first = ctx.generate([ctx.prefix], params.replace(n=cfg.n, max_new_tokens=cfg.reject_after))[0]
        chunks = add_solutions(ctx, 0, first, cfg.separator)
        partial = [c for c, comp in zip(chunks, first) if comp.finish_reason == "length"]
        done = [c for c, comp in zip(chunks, first) if comp.finish_reason != "length"]
        for c in partial:  # these are not solutions yet: no answer, and the scorer sees them as unfinished
            c.finished, c.extracted, c.key = False, None, None
            tree[c.node].terminal, tree[c.node].extracted = False, None
        scores = ctx.score(partial)
        for c, s in zip(partial, scores):
            tree[c.node].score = s
        drop = rejected(scores, cfg.reject_fraction)
        for i in drop:
            tree[partial[i].node].meta["pruned"] = True
        keep = [c for i, c in enumerate(partial) if i not in drop]
        rest = params.replace(max_new_tokens=cfg.max_new_tokens - cfg.reject_after)
        groups = ctx.generate([ctx.prefix + c.text for c in keep], rest, counts=[1] * len(keep))
        for c, comps in zip(keep, groups):
            done += add_solutions(ctx, c.node, comps, cfg.separator)
        return done


class WeightedMajorityVote(BestOfN):
    name = "wmv"
    Config = WeightedVoteConfig
