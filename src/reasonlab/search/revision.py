"""Sequential revision: think -> answer -> review -> revise, then pick among the attempts.

Each chain starts with one attempt. A revision round feeds the model its previous attempt followed
by the reflection prompt (Marco-o1 / s1 style) "Wait! Maybe I made some mistakes! I need to rethink
from scratch." and lets it write a new attempt; with ``review_prompt`` set it first writes a review of
the attempt after that prompt (Self-Refine, Madaan et al. 2023: feedback, then refine), and the
revision sees the review too. The prompt of round ``i`` is::

    rendered prompt + attempt_{i-1} + joiner + [review_prompt + review + joiner] + reflection + joiner

For chat prompts the rendered prompt ends with the assistant's turn, so the reflection continues
the model's own turn, which is how the reflection prompt is meant to be used. ``chains`` independent
chains run side by side (Snell et al. 2024 mix parallel and sequential sampling).

Revisions also flip right answers to wrong, so the final answer is picked over *all* attempts:
``majority`` (plain vote over their answers), ``vote`` (weighted by the scorer), ``best`` (highest
score) or ``last`` (the last attempt of each chain, majority over chains: the no-selection baseline).

Only instruction-following models can use the reflection; a raw-text model such as ``tiny`` still
runs (the previous attempt and the reflection are appended to its prompt) but gains nothing. The
tree is a ``"revisions"`` tree: each node is a whole attempt whose parent is the attempt it revises.
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonlab.search.base import (
    PICKS,
    Candidate,
    SamplingOptions,
    SearchContext,
    Strategy,
    add_solutions,
    pick_whole,
)

REFLECTION = "Wait! Maybe I made some mistakes! I need to rethink from scratch."


@dataclass(frozen=True)
class RevisionConfig(SamplingOptions):
    """Sequential revision: attempt, (review,) reflect and revise; pick among all attempts."""

    rounds: int = 4
    """Attempts per chain: the first one and rounds - 1 revisions."""
    chains: int = 1
    """Independent revision chains."""
    pick: str = "majority"
    """Final pick over all attempts: majority, vote (score-weighted), best (highest score), last."""
    reflection: str = REFLECTION
    """Written after the previous attempt to start a revision."""
    review_prompt: str = ""
    """If set, the model first reviews its attempt after this text, e.g. "Let me check each step." (empty: no review)."""
    review_max_new_tokens: int = 128
    """Longest review, in tokens."""
    joiner: str = "\n\n"
    """Between the previous attempt, the review and the reflection."""
    separator: str = "\n\n"
    """Where an attempt is cut into steps for process scorers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.chains < 1:
            raise ValueError(f"need rounds >= 1 and chains >= 1, got {self.rounds} and {self.chains}")
        if self.pick not in (*PICKS, "last"):
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, last; got {self.pick!r}")


class Revision(Strategy):
    name = "revise"
    Config = RevisionConfig

    def needs_scorer(self) -> bool:
        return self.config.pick in ("vote", "best")

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg = self.config
        ctx.tree.mode = "revisions"
        params = cfg.sampling(stop=ctx.task.stop)
        attempts: list[Candidate] = []
        heads: list[Candidate] = add_solutions(ctx, 0, ctx.generate([ctx.prefix], params.replace(n=cfg.chains))[0],
                                               cfg.separator)
        attempts += heads
        for round_ in range(1, cfg.rounds):
            if not heads:
                break
            prompts = [ctx.prefix + c.text + cfg.joiner for c in heads]
            if cfg.review_prompt:
                prompts = self._reviews(ctx, heads, prompts)
            prompts = [p + cfg.reflection + cfg.joiner for p in prompts]
            groups = ctx.generate(prompts, params, counts=[1] * len(heads))
            nxt = []
            for parent, comps in zip(heads, groups):
                nxt += add_solutions(ctx, parent.node, comps, cfg.separator)
            for c in nxt:
                ctx.tree[c.node].meta["round"] = round_
            attempts += nxt
            heads = nxt
        if not attempts:
            return 0, []
        if cfg.pick in ("vote", "best"):
            for c, s in zip(attempts, ctx.score(attempts)):
                ctx.tree[c.node].score = s
        # Every pick counts only finished attempts (unless none finished), as self-consistency's vote does:
        # an attempt cut off by max_new_tokens or the budget may hold a truncated answer.
        if cfg.pick == "last":
            lasts = [c for c in attempts if not ctx.tree.children(c.node)]
            return lasts[pick_whole(ctx.tree, lasts, "majority")].node, attempts
        if cfg.pick == "majority":  # the most revised attempt with the winning answer: newest first
            newest_first = attempts[::-1]
            return newest_first[pick_whole(ctx.tree, newest_first, "majority")].node, attempts
        return attempts[pick_whole(ctx.tree, attempts, cfg.pick)].node, attempts

    def _reviews(self, ctx: SearchContext, heads: list[Candidate], prompts: list[str]) -> list[str]:
        """Let the model review each attempt; return the prompts extended by the reviews."""
        cfg = self.config
        asked = [p + cfg.review_prompt for p in prompts]
        params = cfg.sampling(max_new_tokens=cfg.review_max_new_tokens, stop=ctx.task.stop)
        groups = ctx.generate(asked, params, counts=[1] * len(asked))
        out = []
        for c, p, comps in zip(heads, asked, groups):
            review = comps[0].text if comps else ""
            ctx.tree[c.node].meta["review"] = review
            out.append(p + review + cfg.joiner)
        return out
