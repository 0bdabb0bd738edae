"""The search layer's shared interface: strategies, the metered context, compute records, search trees.

Every strategy (``search/greedy.py`` ... ``search/revision.py``) is one class with one method::

    result = strategy.search(example, policy, task, scorer, budget=2048)

``search`` builds a :class:`SearchContext` and calls the strategy's ``run(ctx)``. The context is the
*only* way a strategy (or a scorer that generates, like Monte-Carlo rollouts) reaches the policy and
the scorer, and it counts everything that passes through it into one :class:`Compute` record: prompt
and generated tokens, generations, scorer calls, and where the wall time went. Because the counting
and the budget live in the context, no strategy can forget them.

**The budget** is a cap on generated tokens and is never exceeded: before each ``generate`` call the
context caps ``rows * max_new_tokens`` to what is left, first by dropping rows (fewer samples), then,
when not even one full row is affordable, by one row with a shorter ``max_new_tokens``; when not even
``min_new_tokens`` are left it generates nothing, and the strategy stops. The cap is on the worst
case (every row runs to ``max_new_tokens``), so set ``max_new_tokens`` near the real solution length.

**Answers** are read with ``task.score_many(...).extracted`` and grouped with ``task.answer_key``;
strategies use only the extracted answer, never the correctness the task also computes (that would
be peeking at the gold answer). Only the scorer named ``verifier-oracle`` (and Math-Shepherd's
``mc-rollout``, which judges rollouts against the gold answer) may use it, and they say so.
:func:`annotate` marks which tree nodes are correct after a search, for the report.

**Trees**: every strategy records what it explored as a :class:`Tree` of :class:`Node` s (steps,
scores, visits, values, priors) and marks the chosen path; trees serialize to JSON and load back.
In a ``"steps"`` tree a node's solution is the concatenation of the step texts on its path; in a
``"revisions"`` tree (sequential revision) each node is a whole attempt that revises its parent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from reasonlab import config as config_lib
from reasonlab.errors import BackendError, UsageError
from reasonlab.types import Completion, Example, SamplingParams
from reasonlab.rewards.steps import split_steps  # noqa: F401 - re-exported for the strategies

if TYPE_CHECKING:
    from reasonlab.policies.base import Policy
    from reasonlab.search.scorers import Scorer
    from reasonlab.tasks.base import Task

#: Why a generated step ended (see :meth:`SearchContext.stop_reason`), besides the stop string itself.
EOS, LENGTH, UNKNOWN_STOP = "eos", "length", "stop"


# ----------------------------------------------------------------------------------------------
# Compute accounting
# ----------------------------------------------------------------------------------------------

@dataclass
class Compute:
    """What one search spent. Times are seconds; ``overhead_s`` is the search's own bookkeeping."""

    budget: int | None = None
    """The cap on generated tokens this search ran under (None: uncapped)."""
    prompt_tokens: int = 0
    """Prompt tokens, counted once per distinct prompt of each generate call (prefilled once for n samples)."""
    generated_tokens: int = 0
    """Generated tokens, including scorer rollouts and tokens cut off by stop strings."""
    generations: int = 0
    """Completions sampled (each of n samples counts one)."""
    generate_calls: int = 0
    """Calls to the policy's generate."""
    scorer_calls: int = 0
    """Candidates rated by the scorer (a batch of 8 candidates counts 8)."""
    wall_time_s: float = 0.0
    generation_time_s: float = 0.0
    scorer_time_s: float = 0.0
    """Time inside the scorer, excluding the generation it asked for (that is in generation_time_s)."""
    answer_time_s: float = 0.0
    """Time reading answers out of texts (the task's extraction)."""

    @property
    def overhead_s(self) -> float:
        """Wall time outside generation, scoring and answer reading: the search's own cost."""
        return self.wall_time_s - self.generation_time_s - self.scorer_time_s - self.answer_time_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "overhead_s": self.overhead_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Compute:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __add__(self, other: Compute) -> Compute:
        """Totals over searches (budgets add when all are set)."""
        out = Compute(budget=None if self.budget is None or other.budget is None else self.budget + other.budget)
        for f in dataclasses.fields(self):
            if f.name != "budget":
                setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        return out


# ----------------------------------------------------------------------------------------------
# Trees
# ----------------------------------------------------------------------------------------------

@dataclass
class Node:
    """One step (or one whole attempt) in a search tree."""

    id: int
    parent: int | None
    text: str = ""
    """The step's text as it continues the parent's (separator included), or a whole attempt."""
    tokens: int = 0
    """Generated tokens of this step."""
    logprob: float | None = None
    """Sum of the step's token log-probs under the policy (None if the backend gave none)."""
    score: float | None = None
    """The scorer's rating of the solution ending here (None: not rated, or the scorer could not)."""
    visits: int = 0
    """MCTS visit count."""
    value: float = 0.0
    """MCTS mean backed-up value Q."""
    prior: float | None = None
    """MCTS prior: the step's length-normalized sampling probability, normalized over its siblings."""
    terminal: bool = False
    """No further steps: the model ended the solution, or the step limit was reached (see meta["end"])."""
    extracted: str | None = None
    """Answer read from the solution ending here (terminal nodes only)."""
    correct: bool | None = None
    """Whether that answer is right: filled after the search by :func:`annotate`, never during it."""
    chosen: bool = False
    """On the path to the final answer."""
    depth: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    """Strategy-specific notes: why a step ended, pruned, votes, rollouts, ..."""

    @property
    def mean_logprob(self) -> float | None:
        return None if self.logprob is None or self.tokens == 0 else self.logprob / self.tokens

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # JSON has no NaN: a rating that failed is written as null, like one never made.
        for k in ("score", "logprob", "prior", "value"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None
        d["value"] = 0.0 if d["value"] is None else d["value"]
        return d


class Tree:
    """Nodes in creation order; node 0 is the root (the prompt, empty text)."""

    def __init__(self, mode: str = "steps"):
        if mode not in ("steps", "revisions"):
            raise ValueError(f"tree mode must be 'steps' or 'revisions', got {mode!r}")
        self.mode = mode
        self.nodes: list[Node] = [Node(id=0, parent=None)]
        self._children: dict[int, list[int]] = defaultdict(list)

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes)

    def add(self, parent: int, text: str, **fields: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent, text=text, depth=self.nodes[parent].depth + 1, **fields)
        self.nodes.append(node)
        self._children[parent].append(node.id)
        return node

    def children(self, node_id: int) -> list[Node]:
        return [self.nodes[i] for i in self._children.get(node_id, ())]

    def path(self, node_id: int) -> list[Node]:
        """Nodes from the root to ``node_id``, both included."""
        out = []
        cur: int | None = node_id
        while cur is not None:
            out.append(self.nodes[cur])
            cur = self.nodes[cur].parent
        return out[::-1]

    def solution(self, node_id: int) -> str:
        """The solution text a node stands for (after the prompt)."""
        if self.mode == "revisions":
            return self.nodes[node_id].text
        return "".join(n.text for n in self.path(node_id))

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not self._children.get(n.id)]

    def mark_chosen(self, node_id: int) -> None:
        for n in self.nodes:
            n.chosen = False
        for n in self.path(node_id):
            n.chosen = True

    def chosen_path(self) -> list[int]:
        return [n.id for n in self.nodes if n.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "nodes": [n.to_dict() for n in self.nodes]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        tree = cls(d.get("mode", "steps"))
        tree.nodes = [Node(**nd) for nd in d["nodes"]]
        for n in tree.nodes:
            if n.parent is not None:
                tree._children[n.parent].append(n.id)
        return tree

    @classmethod
    def from_json(cls, text: str) -> Tree:
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------
# Candidates and results
# ----------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    """A (partial or finished) solution as a scorer sees it."""

    text: str
    """The solution so far, after the prompt."""
    steps: tuple[str, ...] = ()
    """The same text cut into steps (separators removed), for process reward models."""
    tokens: int = 0
    logprob: float | None = None
    """Sum of the policy's token log-probs over ``tokens`` tokens (None: unknown)."""
    finished: bool = True
    extracted: str | None = None
    key: Hashable | None = None
    """Vote key of the extracted answer (``task.answer_key``)."""
    node: int | None = None
    """The tree node this candidate stands for."""
    score: float | None = None

    @property
    def mean_logprob(self) -> float | None:
        return None if self.logprob is None or self.tokens == 0 else self.logprob / self.tokens

    def to_dict(self) -> dict[str, Any]:
        score = self.score if self.score is None or math.isfinite(self.score) else None
        return {"node": self.node, "text": self.text, "finished": self.finished, "extracted": self.extracted,
                "key": None if self.key is None else str(self.key), "score": score, "tokens": self.tokens}


@dataclass
class SearchResult:
    """The outcome of one search: the chosen solution, what it cost, and what was explored."""

    strategy: str
    example_id: str
    text: str
    """The full chosen solution (after the prompt)."""
    extracted: str | None
    key: Hashable | None
    compute: Compute
    tree: Tree
    candidates: list[Candidate]
    """Every finished solution the strategy considered, with its score (when rated)."""
    config: dict[str, Any] = field(default_factory=dict)
    scorer: str | None = None

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI-style usage of the whole search."""
        c = self.compute
        return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.generated_tokens,
                "total_tokens": c.prompt_tokens + c.generated_tokens}

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "example_id": self.example_id, "scorer": self.scorer,
                "config": self.config, "text": self.text, "extracted": self.extracted,
                "key": None if self.key is None else str(self.key), "compute": self.compute.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates], "tree": self.tree.to_dict()}


def annotate(result: SearchResult, task: Task, example: Example) -> None:
    """After a search, mark every answered node of its tree right or wrong (for the report).

    This is the harness's job, outside the compute record; strategies never see ``correct``.
    """
    nodes = [n for n in result.tree.nodes if n.terminal or n.extracted is not None]
    if not nodes:
        return
    verdicts = task.score_many([example] * len(nodes), [result.tree.solution(n.id) for n in nodes])
    for n, r in zip(nodes, verdicts):
        n.correct = r.correct if r.value is not None else None


# ----------------------------------------------------------------------------------------------
# Small pure helpers shared by strategies
# ----------------------------------------------------------------------------------------------

def rank_value(score: float | None) -> float:
    """Sort key of a score: a missing or failed rating (None, NaN) ranks below every real one."""
    return -math.inf if score is None or math.isnan(score) else score


def argmax(scores: Sequence[float | None]) -> int:
    """Index of the best score; ties go to the first. Raises on an empty list."""
    if not scores:
        raise ValueError("argmax of nothing")
    return max(range(len(scores)), key=lambda i: (rank_value(scores[i]), -i))


def fit_rows(counts: Sequence[int], rows: int) -> list[int]:
    """Hand out ``rows`` samples round-robin over prompts (in order), at most ``counts[i]`` each."""
    out = [0] * len(counts)
    left = rows
    while left > 0:
        progressed = False
        for i, c in enumerate(counts):
            if left and out[i] < c:
                out[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return out


def weighted_vote(keys: Sequence[Hashable | None], weights: Sequence[float | None]) -> tuple[Hashable | None, dict]:
    """The answer whose candidates' weights sum highest, and the sums. ``keys[i]`` None never wins.

    Ties go to the answer seen first. Unrated candidates (None/NaN weight) add nothing. Weights must
    be non-negative: with negative scores a bigger group would weigh less, which is not a vote.
    """
    totals: dict[Hashable, float] = {}
    for k, w in zip(keys, weights):
        if k is None:
            continue
        w = 0.0 if w is None or math.isnan(w) else w
        if w < 0:
            raise UsageError(f"weighted majority vote needs non-negative scores, got {w:g}; use a scorer "
                             "that rates in [0, 1] (confidence, self-eval, mc-rollout, rm with sigmoid)")
        totals[k] = totals.get(k, 0.0) + w
    if not totals:
        return None, totals
    best = max(totals.values())
    return next(k for k in totals if totals[k] == best), totals  # dicts keep first-seen order


def pick_best(cands: Sequence[Candidate]) -> int:
    """Best-of-N: the highest-scoring candidate (first on ties)."""
    return argmax([c.score for c in cands])


def pick_weighted_vote(cands: Sequence[Candidate]) -> int:
    """Weighted majority vote: the best-scoring candidate of the answer with the largest score sum."""
    winner, _ = weighted_vote([c.key for c in cands], [c.score for c in cands])
    group = [i for i, c in enumerate(cands) if c.key == winner] if winner is not None else list(range(len(cands)))
    return group[argmax([cands[i].score for i in group])]


def pick_majority(cands: Sequence[Candidate]) -> int:
    """Plain majority vote (self-consistency): the first candidate carrying the most common answer."""
    from reasonlab.evaluation.metrics import majority

    winner, _ = majority([c.key for c in cands])
    return next((i for i, c in enumerate(cands) if c.key == winner), 0) if winner is not None else 0


#: How a strategy picks its final answer among finished candidates.
PICKS = {"best": pick_best, "vote": pick_weighted_vote, "majority": pick_majority}


def whole_indices(tree: Tree, cands: Sequence[Candidate]) -> list[int]:
    """Indices of the samples of ``cands`` that finished (a stop string or EOS), or of all when none did.

    A sample that ran out of tokens (``meta["end"] == "length"``: its max_new_tokens, or the budget's
    last, shortened row) is not a solution: a short cut-off text rates high on confidence, and its
    answer may be a truncated number ("answer: 10" of "answer: 1000").
    """
    return [i for i, c in enumerate(cands) if tree[c.node].meta.get("end") != "length"] or list(range(len(cands)))


def pick_whole(tree: Tree, cands: Sequence[Candidate], pick: str) -> int:
    """Index of ``PICKS[pick]``'s choice among the whole samples of ``cands`` (see ``whole_indices``)."""
    eligible = whole_indices(tree, cands)
    return eligible[PICKS[pick]([cands[i] for i in eligible])]


# ----------------------------------------------------------------------------------------------
# The metered context
# ----------------------------------------------------------------------------------------------

class SearchContext:
    """One example's search: the policy and scorer behind one meter, and the budget.

    Strategies and generating scorers call :meth:`generate`, :meth:`score` and :meth:`read_answers`;
    all three count into :attr:`compute`. ``prefix`` is the rendered prompt that every continuation
    extends (``prefix + partial_solution``).
    """

    def __init__(self, example: Example, policy: Policy, task: Task, scorer: Scorer | None = None,
                 budget: int | None = None, seed: int = 0):
        if budget is not None and budget < 1:
            raise UsageError(f"budget must be a positive number of generated tokens, got {budget}")
        self.example, self.policy, self.task, self.scorer = example, policy, task, scorer
        self.budget, self.seed = budget, seed
        self.compute = Compute(budget=budget)
        self.tree = Tree()
        self.prefix = policy.render(example.prompt)
        self._calls = 0
        self._decode = _decoder(policy)

    # -- budget ---------------------------------------------------------------------------------
    @property
    def remaining(self) -> int | None:
        """Generated tokens still affordable (None: no budget)."""
        return None if self.budget is None else self.budget - self.compute.generated_tokens

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], sampling: SamplingParams, counts: Sequence[int] | None = None,
                 min_new_tokens: int = 1) -> list[list[Completion]]:
        """Sample ``counts[i]`` (default ``sampling.n``) completions of ``prompts[i]``, within the budget.

        Returns one list per prompt; a list is shorter than asked (or empty) when the budget capped it
        (see the module docstring). Prompts are raw text (use ``prefix + partial``).
        """
        counts = [sampling.n] * len(prompts) if counts is None else list(counts)
        max_new = sampling.max_new_tokens
        left = self.remaining
        if left is not None and sum(counts) * max_new > left:
            if left >= max_new:
                counts = fit_rows(counts, left // max_new)
            elif left >= max(1, min_new_tokens):
                counts, max_new = fit_rows(counts, 1), left
            else:
                counts = [0] * len(counts)
        groups: list[list[Completion]] = [[] for _ in prompts]
        by_n: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(counts):
            if c > 0:
                by_n[c].append(i)
        for n, idx in by_n.items():  # prompts wanting the same n go in one call (prefilled once per prompt)
            self._calls += 1
            seed = zlib.crc32(f"{self.seed}/{self.example.id}/{self._calls}".encode())
            params = sampling.replace(n=n, max_new_tokens=max_new, seed=seed)
            t0 = time.perf_counter()
            out = self.policy.generate([prompts[i] for i in idx], params)
            self.compute.generation_time_s += time.perf_counter() - t0
            if len(out) != len(idx) * n:
                raise BackendError(f"policy {self.policy.name} returned {len(out)} completions for "
                                   f"{len(idx)} prompts x n={n}")
            for j, i in enumerate(idx):
                groups[i] = out[j * n:(j + 1) * n]
                self.compute.prompt_tokens += groups[i][0].prompt_tokens
            for c in out:
                if c.completion_tokens > max_new:  # the budget promise rests on this
                    raise BackendError(f"policy {self.policy.name} generated {c.completion_tokens} tokens "
                                       f"with max_new_tokens={max_new}")
                self.compute.generated_tokens += c.completion_tokens
            self.compute.generations += len(out)
            self.compute.generate_calls += 1
        return groups

    def stop_reason(self, completion: Completion, stops: Sequence[str]) -> str:
        """Why a completion ended: ``"length"``, ``"eos"``, the stop string that ended it, or ``"stop"``
        (it stopped, but this backend cannot tell whether at EOS or at which stop string).

        Decoding the sampled ids shows what was cut: the text is their decoding cut before the stop
        string, so the decoding continues with that stop string; at EOS nothing was cut.
        """
        if completion.finish_reason == "length":
            return LENGTH
        if self._decode is None or not completion.token_ids:
            return UNKNOWN_STOP
        full = self._decode(completion.token_ids)
        if not full.startswith(completion.text):
            return UNKNOWN_STOP
        rest = full[len(completion.text):]
        for s in sorted(stops, key=len, reverse=True):
            if s and rest.startswith(s):
                return s
        return EOS

    # -- scoring and answers --------------------------------------------------------------------
    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        """Rate candidates with the scorer (one scorer call per candidate); also sets ``c.score``."""
        if self.scorer is None:
            raise UsageError("this search needs a scorer, but none was given")
        if not candidates:
            return []
        nested_before = self.compute.generation_time_s + self.compute.answer_time_s
        t0 = time.perf_counter()
        scores = [float(s) for s in self.scorer.score(self, list(candidates))]
        # Generation (rollouts) and answer reading the scorer asked for are counted as such already.
        nested = self.compute.generation_time_s + self.compute.answer_time_s - nested_before
        self.compute.scorer_time_s += time.perf_counter() - t0 - nested
        if len(scores) != len(candidates):
            raise BackendError(f"scorer {self.scorer.name} returned {len(scores)} scores for {len(candidates)} candidates")
        self.compute.scorer_calls += len(candidates)
        for c, s in zip(candidates, scores):
            c.score = s
        return scores

    def read_answers(self, texts: Sequence[str]) -> list[tuple[str | None, Hashable | None]]:
        """``(extracted answer, vote key)`` of each solution text. Correctness is ignored on purpose."""
        if not texts:
            return []
        t0 = time.perf_counter()
        results = self.task.score_many([self.example] * len(texts), list(texts))
        out = [(r.extracted, self.task.answer_key(r.extracted)) for r in results]
        self.compute.answer_time_s += time.perf_counter() - t0
        return out

    def fill_answers(self, candidates: Sequence[Candidate]) -> None:
        """Set ``extracted`` and ``key`` of the finished candidates in one batch."""
        done = [c for c in candidates if c.finished]
        for c, (ext, key) in zip(done, self.read_answers([c.text for c in done])):
            c.extracted, c.key = ext, key


def _decoder(policy: Policy):
    """A function ids -> text for backends that have one (special tokens dropped), else None."""
    if callable(getattr(policy, "detokenize", None)):
        return policy.detokenize  # llama.cpp backend
    tok = getattr(policy, "tokenizer", None)
    if tok is not None and callable(getattr(tok, "decode", None)):
        return lambda ids: tok.decode(ids, skip_special_tokens=True)
    return None


# ----------------------------------------------------------------------------------------------
# Shared config pieces and step expansion
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings every strategy shares."""

    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0 disables)."""
    max_new_tokens: int = 256
    """Longest whole solution (or rollout), in tokens; the budget cap assumes each sample may use all of it."""
    seed: int = 0
    """Seed of the search: with the same seed and example the same samples are drawn."""

    def __post_init__(self) -> None:
        SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                       max_new_tokens=self.max_new_tokens)  # validates, with its messages

    def sampling(self, n: int = 1, max_new_tokens: int | None = None, stop: Sequence[str] = ()) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=max_new_tokens or self.max_new_tokens, stop=tuple(stop))


@dataclass(frozen=True)
class StepOptions(SamplingOptions):
    """How solutions are cut into steps, for step-level strategies (beam, REBASE, MCTS)."""

    separator: str = "\n\n"
    """A step ends where the model writes this string (the issue's default: a blank line; tiny's steps are lines, "\\n")."""
    step_tokens: int = 0
    """If > 0, steps are "mini-steps" of this many tokens (Marco-o1) instead of ending at the separator."""
    max_step_tokens: int = 128
    """Longest step in tokens when steps end at the separator."""
    max_steps: int = 16
    """Deepest solution in steps; a path that reaches it is terminal."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_tokens < 0 or self.max_step_tokens < 1 or self.max_steps < 1:
            raise ValueError("step_tokens must be >= 0, max_step_tokens and max_steps >= 1")
        if not self.step_tokens and not self.separator:
            raise ValueError("set a step separator or step_tokens > 0")


def expand(ctx: SearchContext, parents: Sequence[int], counts: Sequence[int], opts: StepOptions) -> list[Node]:
    """Sample ``counts[i]`` next steps below node ``parents[i]`` (one metered call) and add them to the tree.

    A step ends at the separator (kept in the step's text, so texts concatenate to the solution),
    after ``step_tokens`` tokens (mini-steps), or where the model ends the solution (EOS or a stop
    string of the task): those steps are terminal and get their answer read. Returns the new nodes,
    parent by parent; fewer than asked when the budget ran short.
    """
    tree = ctx.tree
    mini = opts.step_tokens > 0
    stops = tuple(ctx.task.stop) if mini else tuple(ctx.task.stop) + (opts.separator,)
    params = opts.sampling(max_new_tokens=opts.step_tokens if mini else opts.max_step_tokens, stop=stops)
    groups = ctx.generate([ctx.prefix + tree.solution(p) for p in parents], params, counts=counts)
    new: list[Node] = []
    for p, comps in zip(parents, groups):
        for c in comps:
            reason = ctx.stop_reason(c, stops)
            text = c.text
            if mini:
                finished = reason != LENGTH
            elif reason == UNKNOWN_STOP:
                # The backend cannot say whether it met the separator or EOS: assume the separator;
                # a model that has finished writes an empty next step, which then ends the path.
                finished = not text.strip()
                text = text if finished else text + opts.separator
            elif reason == opts.separator:
                finished, text = False, text + opts.separator
            else:
                finished = reason != LENGTH  # EOS or the task's stop: the model ended its solution
            depth = tree[p].depth + 1
            end = reason if finished else ("max_steps" if depth >= opts.max_steps else reason)
            node = tree.add(p, text, tokens=c.completion_tokens,
                            logprob=sum(c.logprobs) if c.logprobs is not None else None,
                            terminal=finished or depth >= opts.max_steps, meta={"end": end})
            new.append(node)
    done = [n for n in new if n.terminal]
    for n, (ext, _) in zip(done, ctx.read_answers([tree.solution(n.id) for n in done])):
        n.extracted = ext
    return new


def draw_samples(ctx: SearchContext, prompt: str, n: int, batch: int, params: SamplingParams) -> list[Completion]:
    """``n`` whole samples of ``prompt`` in one call, or with ``n == 0`` rounds of ``batch`` samples
    until the budget can fund no more (the "spend the budget" mode of the parallel strategies)."""
    if n > 0:
        return ctx.generate([prompt], params.replace(n=n))[0]
    if ctx.remaining is None:
        raise UsageError("n=0 means 'as many samples as the budget affords': give a budget")
    out: list[Completion] = []
    while True:
        before = ctx.compute.generated_tokens
        got = ctx.generate([prompt], params.replace(n=batch))[0]
        out += got
        if not got or ctx.compute.generated_tokens == before:
            return out


def add_solutions(ctx: SearchContext, parent: int, completions: Sequence[Completion],
                  separator: str = "") -> list[Candidate]:
    """Add whole solutions below ``parent`` as terminal nodes; return them as candidates with answers.

    With a ``separator`` a solution is cut into steps there, for process scorers.
    """
    cands = []
    for c in completions:
        node = ctx.tree.add(parent, c.text, tokens=c.completion_tokens,
                            logprob=sum(c.logprobs) if c.logprobs is not None else None,
                            terminal=True, meta={"end": c.finish_reason})
        cands.append(node_candidate(ctx, node, separator))
        if separator:
            cands[-1].steps = split_steps(cands[-1].text, separator)
    ctx.fill_answers(cands)
    for c in cands:
        ctx.tree[c.node].extracted = c.extracted
    return cands


def node_candidate(ctx: SearchContext, node: Node, separator: str = "") -> Candidate:
    """The candidate a tree node stands for (its path's text, steps, tokens and log-probs)."""
    if ctx.tree.mode == "revisions":  # a node is a whole attempt
        return Candidate(text=node.text, steps=split_steps(node.text, separator) or (node.text,),
                         tokens=node.tokens, logprob=node.logprob, finished=node.terminal,
                         extracted=node.extracted, node=node.id,
                         key=ctx.task.answer_key(node.extracted) if node.extracted is not None else None)
    path = ctx.tree.path(node.id)[1:]
    lps = [n.logprob for n in path]
    steps = tuple(n.text[:-len(separator)] if separator and n.text.endswith(separator) else n.text for n in path)
    return Candidate(text=ctx.tree.solution(node.id), steps=steps, tokens=sum(n.tokens for n in path),
                     logprob=None if any(lp is None for lp in lps) else sum(lps), finished=node.terminal,
                     extracted=node.extracted,
                     key=ctx.task.answer_key(node.extracted) if node.extracted is not None else None,
                     node=node.id)


def score_nodes(ctx: SearchContext, nodes: Sequence[Node], separator: str = "") -> list[Candidate]:
    """Rate the solutions ending at ``nodes`` in one scorer batch; store each rating on its node."""
    cands = [node_candidate(ctx, n, separator) for n in nodes]
    for n, s in zip(nodes, ctx.score(cands)):
        n.score = s
    return cands


# ----------------------------------------------------------------------------------------------
# The strategy interface
# ----------------------------------------------------------------------------------------------

class Strategy(ABC):
    """A way of spending inference compute on one example. Subclasses implement :meth:`run`."""

    name: ClassVar[str] = "strategy"
    Config: ClassVar[type] = SamplingOptions

    def __init__(self, config: Any = None, **options: Any):
        if config is not None and options:
            raise UsageError(f"{self.name}: give a config or options, not both")
        self.config = config if config is not None else config_lib.build(self.Config, options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def needs_scorer(self) -> bool:
        return True

    @abstractmethod
    def run(self, ctx: SearchContext) -> tuple[int, list[Candidate]]:
        """Search ``ctx.example`` and return ``(chosen node id, finished candidates considered)``."""

    def search(self, example: Example, policy: Policy, task: Task, scorer: Scorer | None = None, *,
               budget: int | None = None) -> SearchResult:
        """Run the strategy on one example; the result carries the chosen solution, compute and tree."""
        if scorer is None and self.needs_scorer():
            raise UsageError(f"strategy {self.name!r} needs a scorer; choose one of the search scorers "
                             "(e.g. confidence, agreement, mc-rollout, verifier-oracle)")
        t0 = time.perf_counter()
        ctx = SearchContext(example, policy, task, scorer, budget=budget, seed=getattr(self.config, "seed", 0))
        chosen, candidates = self.run(ctx)
        ctx.tree.mark_chosen(chosen)
        node = ctx.tree[chosen]
        text = ctx.tree.solution(chosen)
        if node.extracted is None and node.id != 0:
            node.extracted = ctx.read_answers([text])[0][0]
        ctx.compute.wall_time_s = time.perf_counter() - t0
        return SearchResult(strategy=self.name, example_id=example.id, text=text, extracted=node.extracted,
                            key=task.answer_key(node.extracted), compute=ctx.compute, tree=ctx.tree,
                            candidates=candidates, config=config_lib.to_dict(self.config),
                            scorer=getattr(scorer, "name", None))
