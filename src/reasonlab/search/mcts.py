"""Monte-Carlo tree search over reasoning steps (UCT: Kocsis & Szepesvári 2006; PUCT: AlphaZero, Silver et
al. 2018; for LLM reasoning: rStar, Qi et al. 2024, and ReST-MCTS*, Zhang et al. 2024).

One iteration:

1. **Selection**: from the root, follow the child that maximises the PUCT score
   ``Q + c * P * sqrt(N_parent) / (1 + N_child)`` (or UCT, ``Q + c * sqrt(ln N_parent / N_child)``)
   until a node that has no children yet or is terminal.
2. **Expansion**: sample ``expand_k`` next steps below it. A step's prior ``P`` is its
   length-normalized sampling probability ``exp(mean token log-prob)``, normalized over its
   siblings (uniform when the backend gives no log-probs). At the root, Dirichlet noise
   ``(1 - eps) * P + eps * Dir(alpha)`` may be mixed in (AlphaZero's exploration at the root).
3. **Evaluation** of each new step: ``scorer`` rates its partial solution (e.g. a PRM, or the
   ``mc-rollout`` scorer, which is Math-Shepherd's estimate); ``rollout`` completes it ``rollouts``
   times and lets the scorer judge the finished rollouts (mean); ``mix`` takes
   ``(1 - mix) * scorer + mix * rollout`` (AlphaGo's mixing of value and rollout). A terminal step
   is judged directly.
4. **Backpropagation**: the value is added to every node on the path (``visits += 1``, ``Q`` its
   running mean). All ``expand_k`` new children are evaluated and backed up in one batch (as batched
   LLM-MCTS implementations do), so a parent's visits grow by ``k`` per expansion.

Selecting a terminal node backs up its stored value again, at no token cost, which is how good
finished solutions gather visits. The search runs ``iterations`` iterations or until the budget
cannot fund an expansion. The answer is the path that follows the most-visited (``final="visits"``)
or highest-valued (``final="value"``) children, among children whose subtree holds a finished
solution. :func:`uct`, :func:`puct`, :func:`backpropagate` and :func:`dirichlet_noise` are pure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from reasonlab.search.base import (
    Candidate,
    Node,
    SearchContext,
    StepOptions,
    Strategy,
    Tree,
    expand,
    node_candidate,
)


@dataclass(frozen=True)
class MCTSConfig(StepOptions):
    """MCTS over steps: UCT/PUCT selection, k-way expansion, scorer and/or rollout evaluation."""

    iterations: int = 16
    """Selection-expansion-evaluation-backup rounds (the token budget may end the search sooner)."""
    expand_k: int = 3
    """Next steps sampled when a node is expanded."""
    selection: str = "puct"
    """Child selection: puct (uses step priors) or uct."""
    c: float = 1.0
    """Exploration constant of PUCT/UCT."""
    evaluation: str = "scorer"
    """How a new step is valued: scorer (rate the partial solution), rollout (scorer judges finished rollouts), mix."""
    rollouts: int = 1
    """Rollouts per new step for rollout/mix evaluation."""
    mix: float = 0.5
    """Weight of the rollout value in mix evaluation."""
    final: str = "visits"
    """Final path: follow the most-visited children (visits) or the highest-valued ones (value)."""
    dirichlet_alpha: float = 0.3
    """Concentration of the root Dirichlet noise."""
    dirichlet_eps: float = 0.0
    """Weight of the root Dirichlet noise in the priors (0: off; AlphaZero uses 0.25)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in ("puct", "uct") or self.evaluation not in ("scorer", "rollout", "mix"):
            raise ValueError("selection must be puct or uct; evaluation scorer, rollout or mix")
        if self.final not in ("visits", "value"):
            raise ValueError(f"final must be visits or value, got {self.final!r}")
        if self.iterations < 1 or self.expand_k < 1 or self.rollouts < 1:
            raise ValueError("iterations, expand_k and rollouts must be >= 1")
        if not 0 <= self.mix <= 1 or not 0 <= self.dirichlet_eps <= 1 or self.dirichlet_alpha <= 0:
            raise ValueError("need 0 <= mix <= 1, 0 <= dirichlet_eps <= 1 and dirichlet_alpha > 0")


# -- pure functions ------------------------------------------------------------------------------

def uct(q: float, n_parent: int, n_child: int, c: float) -> float:
    """UCT (UCB1 applied to trees): ``q + c * sqrt(ln n_parent / n_child)``; unvisited children first."""
    if n_child == 0:
        return math.inf
    return q + c * math.sqrt(math.log(max(n_parent, 1)) / n_child)


def puct(q: float, prior: float, n_parent: int, n_child: int, c: float) -> float:
    """PUCT (AlphaZero): ``q + c * prior * sqrt(n_parent) / (1 + n_child)``."""
    return q + c * prior * math.sqrt(n_parent) / (1 + n_child)


def backpropagate(tree: Tree, node_id: int, value: float) -> None:
    """Add one visit with ``value`` to every node from ``node_id`` up to the root (Q = running mean)."""
    for node in tree.path(node_id):
        node.visits += 1
        node.value += (value - node.value) / node.visits


def dirichlet_noise(priors: Sequence[float], alpha: float, eps: float, rng: random.Random) -> list[float]:
    """``(1 - eps) * p + eps * Dir(alpha)``: AlphaZero's root exploration noise."""
    draws = [rng.gammavariate(alpha, 1.0) for _ in priors]
    total = sum(draws) or 1.0
    return [(1 - eps) * p + eps * d / total for p, d in zip(priors, draws)]


def step_priors(nodes: Sequence[Node]) -> list[float]:
    """Normalized ``exp(mean log-prob)`` of sibling steps; uniform if any log-prob is unknown."""
    raw = [math.exp(n.mean_logprob) if n.mean_logprob is not None else None for n in nodes]
    if not raw or any(r is None for r in raw) or sum(raw) == 0:
        return [1.0 / len(nodes)] * len(nodes)
    total = sum(raw)
    return [r / total for r in raw]


class MCTS(Strategy):
    name = "mcts"
    Config = MCTSConfig

    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        cfg, tree = self.config, ctx.tree
        rng = random.Random(f"{cfg.seed}/{ctx.example.id}")
        finished: list[Candidate] = []
        for it in range(cfg.iterations):
            leaf = self.select(tree, 0)
            if tree[leaf].terminal and leaf != 0:
                if tree[leaf].meta["eval"] is not None:
                    backpropagate(tree, leaf, tree[leaf].meta["eval"])
                continue
            children = expand(ctx, [leaf], [cfg.expand_k], cfg)
            if not children:  # the budget cannot fund another expansion
                break
            priors = step_priors(children)
            if leaf == 0 and cfg.dirichlet_eps > 0:
                priors = dirichlet_noise(priors, cfg.dirichlet_alpha, cfg.dirichlet_eps, rng)
            for n, p in zip(children, priors):
                n.prior = p
                n.meta["iteration"] = it
            values = self.evaluate(ctx, children, finished)
            for n, v in zip(children, values):
                # A failed rating (NaN) is not backed up: it is no evidence either way, and never a 0.
                n.meta["eval"] = None if math.isnan(v) else v
                if not math.isnan(v):
                    backpropagate(tree, n.id, v)
        return self.final_path(tree), finished

    def select(self, tree: Tree, node_id: int) -> int:
        """Descend by PUCT/UCT to a node without children, or a terminal one."""
        cfg = self.config
        while True:
            node, kids = tree[node_id], tree.children(node_id)
            if node.terminal or not kids:
                return node_id
            if cfg.selection == "puct":
                keys = [puct(k.value, k.prior or 0.0, node.visits, k.visits, cfg.c) for k in kids]
            else:
                keys = [uct(k.value, node.visits, k.visits, cfg.c) for k in kids]
            node_id = kids[max(range(len(kids)), key=lambda i: (keys[i], -i))].id

    def evaluate(self, ctx: SearchContext, nodes: list[Node], finished: list[Candidate]) -> list[float]:
        """Value of each new node (module docstring, step 3); NaN where the rating failed."""
        cfg = self.config
        cands = [node_candidate(ctx, n, cfg.separator) for n in nodes]
        finished += [c for c in cands if c.finished]
        direct = [c for c in cands if c.finished or cfg.evaluation != "rollout"]
        for c, s in zip(direct, ctx.score(direct)):
            ctx.tree[c.node].score = s
        if cfg.evaluation == "scorer":
            return [c.score for c in cands]
        rolled = self._rollouts(ctx, [c for c in cands if not c.finished])
        values = []
        for c in cands:
            if c.finished:
                values.append(c.score)
            elif cfg.evaluation == "rollout":
                values.append(rolled[c.node])
            else:  # mix
                values.append((1 - cfg.mix) * c.score + cfg.mix * rolled[c.node])
        return values

    def _rollouts(self, ctx: SearchContext, cands: list[Candidate]) -> dict[int, float]:
        """Complete each partial solution ``rollouts`` times; the scorer judges the finished texts (mean)."""
        cfg = self.config
        params = cfg.sampling(n=cfg.rollouts, stop=ctx.task.stop)
        groups = ctx.generate([ctx.prefix + c.text for c in cands], params, min_new_tokens=params.max_new_tokens)
        outs = [[Candidate(text=c.text + r.text, tokens=c.tokens + r.completion_tokens, finished=True,
                           logprob=None if c.logprob is None or r.logprobs is None else c.logprob + sum(r.logprobs))
                 for r in comps] for c, comps in zip(cands, groups)]
        flat = [o for group in outs for o in group]
        ctx.fill_answers(flat)
        ctx.score(flat)
        values = {}
        for c, group in zip(cands, outs):
            # A node whose rollouts the budget could not fund, or all failed to rate, has no value.
            rated = [o.score for o in group if not math.isnan(o.score)]
            values[c.node] = sum(rated) / len(rated) if rated else math.nan
            ctx.tree[c.node].meta["rollouts"] = [{"text": o.text[len(c.text):], "score": _json(o.score),
                                                   "extracted": o.extracted} for o in group]
        return values

    def final_path(self, tree: Tree) -> int:
        """Follow the best children (by visits or value) among those leading to a finished solution."""
        by_visits = self.config.final == "visits"
        has_end = {n.id for n in tree.nodes if n.terminal}
        for n in reversed(tree.nodes):  # children come after parents: one reverse pass marks ancestors
            if n.id in has_end and n.parent is not None:
                has_end.add(n.parent)
        node_id = 0
        while True:
            kids = tree.children(node_id)
            if not kids:
                return node_id
            pool = [k for k in kids if k.id in has_end] or kids
            key = (lambda k: (k.visits, k.value)) if by_visits else (lambda k: (k.value, k.visits))
            node_id = max(pool, key=key).id
            if tree[node_id].terminal:
                return node_id


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None
