"""Scorers: the guidance signal of search, pluggable into every strategy.

A :class:`Scorer` rates a batch of candidates (partial or finished solutions of one example) with
one float each, higher is better: ``scorer.score(ctx, candidates) -> list[float]``. It is called
through :meth:`SearchContext.score`, which counts one scorer call per candidate, times it, and
counts any generation the scorer asks for (rollouts) against the token budget. ``NaN`` means "could
not rate" (a failed check, no rollout affordable); strategies rank it below every real score, and a
failure is never turned into a 0.

===================  ================================================================================
name                 score
===================  ================================================================================
``confidence``       exp(mean token log-prob) of the solution under the policy: its geometric-mean
                     token probability, in (0, 1]
``self-eval``        P("yes") when the policy is asked whether the solution so far is correct
                     (Xie et al. 2023, "Self-Evaluation Guided Beam Search"); transformers backend
``agreement``        fraction of the *other* candidates in the batch with the same answer key
``verifier-oracle``  the task's verifier against the gold answer: an ORACLE upper bound, for analysis
``mc-rollout``       Math-Shepherd's Monte-Carlo value (Wang et al. 2024): the fraction of k rollouts
                     from the partial solution whose answer the verifier accepts (uses the gold answer;
                     rollout tokens count toward the budget)
``rm``               any Hugging Face sequence-classification reward model, by path
``prm``              a :class:`ProcessRewardModel` (one score per step), aggregated over steps
===================  ================================================================================

Step scores aggregate with :func:`aggregate`: ``last``, ``min``, ``product`` or ``mean``.
``make_scorer("mc-rollout", k=4)`` builds one by name (``"rm:PATH"`` for a reward model).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from reasonlab import config as config_lib
from reasonlab.errors import BackendError, UsageError
from reasonlab.rewards.steps import AGGREGATIONS, aggregate, aggregate_or_nan, split_steps
from reasonlab.search.base import Candidate, SearchContext
from reasonlab.types import Example, SamplingParams

# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------

class Scorer(ABC):
    """Rates candidates of one example; higher is better, NaN means "could not rate"."""

    name: str = "scorer"

    @abstractmethod
    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        """One float per candidate, in order. Generate only through ``ctx.generate`` (it is metered)."""


@runtime_checkable
class ProcessRewardModel(Protocol):
    """A process reward model: the probability that each step of a solution is correct so far."""

    def step_scores(self, example: Example, steps: Sequence[str]) -> list[float]:
        """One score per step of ``steps`` (a partial or finished solution of ``example``)."""
        ...


# ----------------------------------------------------------------------------------------------
# Internal signals
# ----------------------------------------------------------------------------------------------

@dataclass
class ConfidenceScorer(Scorer):
    """exp(mean token log-prob): the geometric-mean probability the policy gave the solution's tokens.

    It ranks exactly like the mean log-prob and, being in (0, 1], also works as a vote weight. Uses the
    log-probs the policy returned while sampling; for backends that returned none, the policy must
    score token ids itself (``logprobs_of``, the transformers backend).
    """

    name = "confidence"

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        missing = [c for c in candidates if c.logprob is None]
        if missing:
            for c, lp in zip(missing, _logprobs_of_texts(ctx, [c.text for c in missing])):
                c.logprob, c.tokens = lp[0], lp[1]
        return [math.exp(c.logprob / c.tokens) if c.tokens else math.nan for c in candidates]


def _logprobs_of_texts(ctx: SearchContext, texts: Sequence[str]) -> list[tuple[float, int]]:
    """(sum of token log-probs, token count) of each text after the prompt, scored by the policy."""
    policy = ctx.policy
    if not all(hasattr(policy, a) for a in ("logprobs_of", "encode", "tokenizer")):
        raise UsageError(f"policy {policy.name} returned no log-probs and cannot score token ids; the "
                         "confidence scorer needs the transformers backend (or a backend that returns log-probs)")
    prompt = policy.encode(ctx.example.prompt)
    ids = [policy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out = policy.logprobs_of([prompt] * len(ids), ids)
    return [(float(lp.sum()), len(i)) for lp, i in zip(out, ids)]


SELF_EVAL_TEMPLATE = "{prompt}{solution}\n\nIs the solution above correct so far? Answer yes or no.\nAnswer:"
SELF_EVAL_QUESTION = "Is your solution above correct so far? Answer Yes or No."


@dataclass
class SelfEvalScorer(Scorer):
    """P(yes) when the policy is asked whether the (partial) solution is correct.

    The probability is renormalised over the two answers, ``p(yes) / (p(yes) + p(no))``, from the
    model's log-probs of the ``yes`` and ``no`` continuations (multi-token words are summed), computed
    with one forward pass per candidate and answer, no sampling. Chat prompts get the question as a
    new user turn; raw-text prompts get ``template``. Needs a policy that scores token ids (the
    transformers backend). Only an instruction-following model gives this signal any meaning.
    """

    yes: str = " Yes"
    """The affirmative continuation (leading space: it follows "Answer:"); chat prompts use it stripped."""
    no: str = " No"
    """The negative continuation."""
    template: str = SELF_EVAL_TEMPLATE
    """Question for raw-text prompts; {prompt} is the rendered prompt, {solution} the solution so far."""
    name = "self-eval"

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        policy = ctx.policy
        if not all(hasattr(policy, a) for a in ("logprobs_of", "tokenizer")):
            raise UsageError(f"the self-eval scorer needs a policy that scores token ids (transformers "
                             f"backend); {policy.name} cannot")
        tok = policy.tokenizer
        prompts, answers = [], []
        chat = not isinstance(ctx.example.prompt, str)
        for c in candidates:
            if chat:
                msgs = list(ctx.example.prompt) + [{"role": "assistant", "content": c.text},
                                                  {"role": "user", "content": SELF_EVAL_QUESTION}]
                text = policy.render(msgs)
            else:
                text = self.template.format(prompt=ctx.prefix, solution=c.text)
            ids = tok(text, add_special_tokens=not chat)["input_ids"]
            for word in (self.yes, self.no):
                prompts.append(ids)
                answers.append(tok(word.strip() if chat else word, add_special_tokens=False)["input_ids"])
        lps = [float(x.sum()) for x in policy.logprobs_of(prompts, answers)]
        out = []
        for i in range(len(candidates)):
            ly, ln = lps[2 * i], lps[2 * i + 1]
            top = max(ly, ln)
            out.append(math.exp(ly - top) / (math.exp(ly - top) + math.exp(ln - top)))
        return out


@dataclass
class AgreementScorer(Scorer):
    """Semantic agreement: the fraction of the other candidates in the batch with the same answer.

    Answers are grouped by ``task.answer_key`` (``1/2`` agrees with ``0.5``). A candidate without an
    answer (unfinished, or none found) agrees with nothing: 0. A batch of one has no others: NaN.
    """

    name = "agreement"

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        ctx.fill_answers([c for c in candidates if c.finished and c.extracted is None and c.key is None])
        n = len(candidates)
        if n < 2:
            return [math.nan] * n
        keys = [c.key for c in candidates]
        return [0.0 if k is None else (sum(1 for j in keys if j == k) - 1) / (n - 1) for k in keys]


# ----------------------------------------------------------------------------------------------
# External signals
# ----------------------------------------------------------------------------------------------

def _verdicts(ctx: SearchContext, texts: Sequence[str]) -> list[float]:
    """The task verifier's value of each text; a check that failed (timeout, error) is NaN."""
    results = ctx.task.score_many([ctx.example] * len(texts), list(texts))
    return [math.nan if r.value is None else float(r.value) for r in results]


@dataclass
class OracleScorer(Scorer):
    """ORACLE: the task's verifier against the gold answer. An upper bound for analysis, not a method.

    A partial solution has no answer yet and gets the verifier's value for that (0 for unparsable).
    """

    name = "verifier-oracle"

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        return _verdicts(ctx, [c.text for c in candidates])


@dataclass
class RolloutScorer(Scorer):
    """Monte-Carlo value of a partial solution (Math-Shepherd, Wang et al. 2024, "hard estimation" averaged).

    From each unfinished candidate, ``k`` rollouts continue to a final answer; the value is the
    fraction the task's verifier accepts (so it uses the gold answer, as Math-Shepherd does when it
    labels training data). A finished candidate is judged directly. Rollout tokens are generated
    through the context: they count toward the budget and the compute record. Rollouts the verifier
    could not judge are left out of the fraction; with none left the value is NaN.
    """

    k: int = 4
    """Rollouts per unfinished candidate."""
    temperature: float = 0.8
    """Rollout sampling temperature."""
    top_p: float = 1.0
    """Rollout nucleus threshold."""
    max_new_tokens: int = 256
    """Longest rollout, in tokens."""
    name = "mc-rollout"
    last_rollouts: list[list[str]] = field(default_factory=list, init=False, repr=False)
    """The rollout texts of the last call, per candidate (for reports)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        open_ = [i for i, c in enumerate(candidates) if not c.finished]
        params = SamplingParams(n=self.k, temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens, stop=tuple(ctx.task.stop))
        # Only whole rollouts: one the budget cut short would read as a wrong answer and bias the value.
        groups = ctx.generate([ctx.prefix + candidates[i].text for i in open_], params,
                              min_new_tokens=self.max_new_tokens)
        rollouts: list[list[str]] = [[c.text] for c in candidates]
        for i, comps in zip(open_, groups):
            rollouts[i] = [candidates[i].text + c.text for c in comps]
        flat = [t for r in rollouts for t in r]
        values = iter(_verdicts(ctx, flat))
        self.last_rollouts = rollouts
        out = []
        for r in rollouts:
            judged = [v for v in (next(values) for _ in r) if not math.isnan(v)]
            out.append(sum(judged) / len(judged) if judged else math.nan)
        return out


@dataclass
class RewardModelScorer(Scorer):
    """Any Hugging Face sequence-classification reward model (``AutoModelForSequenceClassification``).

    The model reads the rendered prompt followed by the solution. With one output the score is that
    logit (``sigmoid`` maps it into (0, 1), which a weighted vote needs); with several it is the
    softmax probability of class ``label``.
    """

    path: str = ""
    """Local checkpoint directory (or Hugging Face id already in the local cache) of the reward model."""
    device: str = "auto"
    """Device: auto, cpu, cuda."""
    batch_size: int = 16
    """Candidates per forward pass."""
    max_length: int = 2048
    """Longest input in tokens; longer inputs lose their beginning (the solution's end is kept)."""
    sigmoid: bool = False
    """For single-output models: return sigmoid(logit) instead of the logit."""
    label: int = 1
    """For multi-class models: the class whose probability is the score."""
    name = "rm"

    def __post_init__(self) -> None:
        if not self.path:
            raise UsageError("the rm scorer needs the reward model's path (rm:PATH)")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from reasonlab.policies.hf import pick_device

        self._device = pick_device(self.device)
        try:
            self._tok = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self._device).eval()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load a sequence-classification reward model from {self.path!r}: "
                             f"{str(e).splitlines()[0]}") from e
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._tok.padding_side, self._tok.truncation_side = "right", "left"
        self._model.config.pad_token_id = self._tok.pad_token_id
        self._torch = torch

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        texts = [ctx.prefix + c.text for c in candidates]
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                enc = self._tok(texts[s:s + self.batch_size], return_tensors="pt", padding=True,
                                truncation=True, max_length=self.max_length).to(self._device)
                logits = self._model(**enc).logits.float()
                if logits.shape[-1] == 1:
                    vals = logits[:, 0].sigmoid() if self.sigmoid else logits[:, 0]
                else:
                    vals = logits.softmax(-1)[:, self.label]
                out += vals.tolist()
        return out


@dataclass
class PRMScorer(Scorer):
    """Adapter: a :class:`ProcessRewardModel`'s step scores aggregated into one score per candidate."""

    prm: Any = None
    """An object with ``step_scores(example, steps) -> list[float]``."""
    how: str = "min"
    """Aggregation of step scores: last, min, product, mean."""
    name = "prm"

    def __post_init__(self) -> None:
        if not isinstance(self.prm, ProcessRewardModel):
            raise UsageError("the prm scorer needs a process reward model with step_scores(example, steps)")
        if self.how not in AGGREGATIONS:
            raise UsageError(f"unknown step-score aggregation {self.how!r}; choose one of {', '.join(AGGREGATIONS)}")

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        out = []
        for c in candidates:
            steps = c.steps or (c.text,)
            scores = list(self.prm.step_scores(ctx.example, steps))
            if len(scores) != len(steps):
                raise BackendError(f"process reward model returned {len(scores)} scores for {len(steps)} steps")
            out.append(aggregate(scores, self.how))
        return out


# ----------------------------------------------------------------------------------------------
# Trained reward models (reasonlab train orm / prm): rewards.reward_model.RewardModel, duck-typed
# ----------------------------------------------------------------------------------------------

@dataclass
class OutcomeScorer(Scorer):
    """A trained ORM as a search scorer: P(correct) of each candidate's text (partial ones included)."""

    rm: Any = None
    """A RewardModel of kind orm."""
    name = "orm"

    def __post_init__(self) -> None:
        if getattr(self.rm, "kind", None) != "orm":
            raise UsageError("OutcomeScorer needs an ORM (a RewardModel of kind 'orm')")

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        return self.rm.score_outcomes([ctx.example.prompt] * len(candidates), [c.text for c in candidates])


@dataclass
class ProcessScorer(PRMScorer):
    """A trained PRM (or implicit PRM) as a search scorer: step scores of all candidates in one batch, aggregated.

    Same results as ``PRMScorer(prm, how)`` (which asks for one candidate at a time), faster.
    """

    name = "prm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(getattr(self.prm, "score_steps", None)):
            raise UsageError("ProcessScorer needs a model with score_steps(prompts, steps); use PRMScorer otherwise")

    def score(self, ctx: SearchContext, candidates: Sequence[Candidate]) -> list[float]:
        steps = [list(c.steps) or (list(split_steps(c.text, self.prm.separator)) or [c.text]) for c in candidates]
        per_step = self.prm.score_steps([ctx.example.prompt] * len(candidates), steps)
        return [aggregate_or_nan(s, self.how) for s in per_step]


def as_scorer(model: Any, how: str = "min") -> Scorer:
    """The search scorer of a trained reward model: ORM -> OutcomeScorer, PRM kinds -> ProcessScorer."""
    if how not in AGGREGATIONS:
        raise UsageError(f"unknown step-score aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if getattr(model, "kind", None) == "orm":
        return OutcomeScorer(rm=model)
    return ProcessScorer(prm=model, how=how)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

SCORERS: dict[str, type[Scorer]] = {
    "confidence": ConfidenceScorer,
    "self-eval": SelfEvalScorer,
    "agreement": AgreementScorer,
    "verifier-oracle": OracleScorer,
    "mc-rollout": RolloutScorer,
    "rm": RewardModelScorer,
    "prm": PRMScorer,
}


def make_scorer(spec: str, **options: Any) -> Scorer:
    """Build a scorer by name, e.g. ``make_scorer("mc-rollout", k=8)``, ``make_scorer("rm:/path/to/rm")`` (a Hugging
    Face sequence classifier) or ``make_scorer("prm:runs/prm/final", how="min")`` (a trained ORM/PRM).

    Option values may be strings (from a command line); they are converted to the field's type.
    """
    name, _, arg = spec.partition(":")
    if name in ("orm", "prm") and arg:  # a trained reward model directory (reasonlab train orm / prm)
        from reasonlab.rewards.reward_model import load_reward_model

        unknown = set(options) - {"how"}
        if unknown:
            raise UsageError(f"scorer {name}:PATH takes only the option 'how', not {', '.join(sorted(unknown))}")
        return as_scorer(load_reward_model(arg), str(options.get("how", "min")))
    if name not in SCORERS:
        raise UsageError(f"unknown scorer {spec!r}; choose one of {', '.join(SCORERS)}")
    if arg:
        if name != "rm":
            raise UsageError(f"scorer {name!r} takes no argument after ':' (only rm:PATH, orm:PATH and prm:PATH do)")
        options = {**options, "path": arg}
    return config_lib.build(SCORERS[name], options)
