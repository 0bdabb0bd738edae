"""Generative judges (LLM-as-a-judge): a policy reads a question and a response and says how good it is.

Any :class:`~reasonlab.policies.base.Policy` can judge: a local transformers or llama.cpp model, or
an OpenAI-compatible server (which is just another policy). Four kinds:

- :class:`PointwiseJudge`: a 1-10 rating in MT-Bench's single-answer format, ``Rating: [[7]]``
  (Zheng et al. 2023, "Judging LLM-as-a-Judge").
- :class:`RubricJudge`: the additive 5-point rubric of Yuan et al. 2024 ("Self-Rewarding Language
  Models", Fig. 2): one point per criterion met, the total written as ``Score: <points>``.
- :class:`PairwiseJudge`: which of two responses is better, ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (tie).
  Judges prefer one position (usually the first) regardless of content, so every pair is judged
  in both orders and the two verdicts are averaged: ``P(a better) = (v(a, b) + 1 - v(b, a)) / 2``.
  A consistent preference gives 1 or 0; verdicts that flip with the order (pure position bias)
  cancel to 0.5.
- :class:`YesNoJudge`: the probability that the answer to a yes/no question ("is the response
  correct?") is yes. With a policy that scores token ids (``logprobs_of``, ``encode``, ``tokenizer``:
  the transformers backend), both answers are scored in one batched call as continuations of the
  judge prompt: ``P(yes) = e^{lp_yes} / (e^{lp_yes} + e^{lp_no})``, where ``lp_w`` is the
  log-probability of the tokens of ``w`` (summed over ``Yes``/``yes`` spellings, and over the tokens
  of the word, so a word split into several tokens is scored exactly). A sampled completion only
  carries the log-prob of the token it chose, never of the alternative, so with other backends
  ``P(yes)`` is the frequency of yes among ``samples`` sampled verdicts.

Every judge can reason first (``cot=True``: chain-of-thought judging, the verdict on a last line)
or answer directly. Parsing is pure functions (:func:`parse_score`, :func:`parse_yes_no`,
:func:`parse_choice`) that return a :class:`~reasonlab.types.RewardResult`: ``OK`` means *the
verdict was read* and ``value`` holds it (the rating, the points, ``P(yes)``, ``P(a better)``); a
verdict that cannot be read is ``UNPARSABLE`` with ``value`` None. Judges count those in
``judge.stats``, and the TRL-shaped wrappers (:func:`judge_reward`, :func:`pairwise_reward`) return
None for them and log how many: a parse failure is never a score.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy
from reasonlab.rewards.combinators import RewardFn, completion_text
from reasonlab.types import Completion, Prompt, RewardResult, SamplingParams, Status

__all__ = [
    "JudgeConfig", "JudgeStats", "Judge", "PointwiseJudge", "RubricJudge", "PairwiseJudge", "YesNoJudge",
    "parse_score", "parse_yes_no", "parse_choice", "combine_pairwise", "judge_reward", "pairwise_reward",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------

_REFERENCE_BLOCK = "\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n"

POINTWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question displayed below. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of the response.{reference_note} {how}\n\n"
    "[Question]\n{question}\n{reference_block}\n"
    "[The Start of Assistant's Answer]\n{response}\n[The End of Assistant's Answer]"
)
_POINTWISE_COT = ("Begin your evaluation by providing a short explanation. Be as objective as possible. After "
                  "providing your explanation, you must rate the response on a scale of {low} to {high} by strictly "
                  "following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".")
_POINTWISE_DIRECT = ("Do not explain. Reply with the rating only, on a scale of {low} to {high}, strictly in this "
                     "format: \"Rating: [[5]]\".")

#: Yuan et al. 2024, "Self-Rewarding Language Models", Fig. 2 (the LLM-as-a-Judge prompt).
RUBRIC_TEMPLATE = (
    "Review the user's question and the corresponding response using the additive 5-point scoring system "
    "described below. Points are accumulated based on the satisfaction of each criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the user's inquiry, "
    "even if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's question, but does not "
    "completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question in a useful way, "
    "regardless of whether it seems to have been written by an AI Assistant or if it has elements typically "
    "found in blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing "
    "the user's question directly and comprehensively, and is well-organized and helpful, even if there is "
    "slight room for improvement in clarity, conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI "
    "Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a "
    "high-quality, engaging, and insightful answer.\n\n"
    "User: {question}\n{reference_block}\n<response>{response}</response>\n\n"
    "After examining the user's instruction and the response:\n"
    "{how}"
    "- Conclude with the score using the format: \"Score: <total points>\"\n\n"
    "Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To "
    "evaluate the response in alignment with this additive scoring model, we'll systematically attribute "
    "points based on the outlined criteria."
)
_RUBRIC_COT = "- Briefly justify your total score, up to 100 words.\n"
_RUBRIC_DIRECT = "- Do not justify the score.\n"

PAIRWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses.{reference_note} Avoid any "
    "position biases and ensure that the order in which the responses were presented does not influence your "
    "decision. Do not allow the length of the responses to influence your evaluation. Be as objective as "
    "possible. {how}\n\n"
    "[User Question]\n{question}\n{reference_block}\n"
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
_PAIRWISE_COT = ("Begin your evaluation by comparing the two responses and provide a short explanation. After "
                 "providing your explanation, output your final verdict by strictly following this format: "
                 "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")
_PAIRWISE_DIRECT = ("Do not explain. Output only your final verdict, strictly in this format: \"[[A]]\" if "
                    "assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")

YES_NO_TEMPLATE = (
    "Below are a question and a response.{reference_note}\n\n"
    "[Question]\n{question}\n{reference_block}\n[Response]\n{response}\n\n"
    "{criterion} {how}"
)
_YES_NO_COT = ("Think it through step by step first. Then finish with a final line of the form \"Verdict: Yes\" "
               "or \"Verdict: No\".")
_YES_NO_DIRECT = "Answer with a single word: Yes or No."

_REFERENCE_NOTE = " A reference answer is given: a response whose final answer disagrees with it is wrong."


def _unreadable(details: str) -> RewardResult:
    """A verdict that could not be read. Its value is None, not the 0 a verifier gives an unparsable
    answer: for a judge, an unreadable verdict says nothing about the response."""
    return RewardResult(None, Status.UNPARSABLE, None, details)


def _reference_parts(reference: str | None) -> dict[str, str]:
    if reference is None:
        return {"reference_note": "", "reference_block": ""}
    return {"reference_note": _REFERENCE_NOTE, "reference_block": _REFERENCE_BLOCK.format(reference=reference)}


# ----------------------------------------------------------------------------------------------
# Parsing: pure functions, text -> RewardResult
# ----------------------------------------------------------------------------------------------

_NUM = r"-?\d+(?:\.\d+)?"
# "Rating: [[7]]", "Score: 4", "**Score:** 8/10", "a score of 6 out of 10", "[[7]]".
_SCORE_LABELLED = re.compile(
    rf"\b(?:score|rating)\b\s*(?:is|of|:|=)?\s*[*_]*\s*:?\s*\[{{0,2}}\s*({_NUM})\s*\]{{0,2}}\s*(?:(?:/|out\s+of)\s*(\d+))?",
    re.IGNORECASE,
)
_SCORE_BRACKETS = re.compile(rf"\[\[\s*({_NUM})\s*\]\](?:\s*(?:/|out\s+of)\s*(\d+))?")
_YES_NO_LINE = re.compile(r"\b(?:verdict|answer|judg(?:e)?ment)\s*[:=]\s*[*_\"'`]*\s*(yes|no)\b", re.IGNORECASE)
_YES_NO_FIRST = re.compile(r"^[\s*_\"'`>#-]*(yes|no)\b", re.IGNORECASE)
_CHOICE_BRACKETS = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_CHOICE_LABELLED = re.compile(
    r"(?i:\b(?:verdict|winner|better\s+response|better\s+answer)\b)\s*(?i:is|:)?\s*[*_\"'`(\[]*\s*"
    r"(?i:assistant\s+|response\s+)?([AB]\b|(?i:tie)\b)"
)


def parse_score(text: str, low: float = 1, high: float = 10) -> RewardResult:
    """The judge's rating, read from its *last* ``Rating: [[n]]`` / ``Score: n`` / ``[[n]]``.

    The last one is the verdict (a chain-of-thought judge reasons before it). ``OK`` with
    ``value = n`` when ``low <= n <= high``; ``UNPARSABLE`` when there is no rating, it is out of
    range, or it is written out of another maximum (``4/5`` on a 1-10 scale).
    """
    found = [(m.start(), m) for pattern in (_SCORE_LABELLED, _SCORE_BRACKETS) for m in pattern.finditer(text or "")]
    if not found:
        return _unreadable(f"no rating found (expected 'Rating: [[n]]' or 'Score: n', n in {low:g}..{high:g})")
    m = max(found, key=lambda x: x[0])[1]
    value = float(m.group(1))
    if m.group(2) is not None and float(m.group(2)) != high:
        return _unreadable(f"rating {m.group(1)}/{m.group(2)} is not on the {low:g}..{high:g} scale")
    if not low <= value <= high:
        return _unreadable(f"rating {m.group(1)} outside {low:g}..{high:g}")
    return RewardResult(value, Status.OK, m.group(1), f"rating {m.group(1)} on {low:g}..{high:g}")


def parse_yes_no(text: str, cot: bool = False) -> RewardResult:
    """A yes/no verdict: ``OK`` with value 1.0 (yes) or 0.0 (no), else ``UNPARSABLE``.

    The last ``Verdict: yes|no`` (or ``Answer:``/``Judgement:``) line wins. Without one, a direct
    judge (``cot=False``) may answer with the first word; a chain-of-thought judge must write the
    verdict line (its first word is the start of its reasoning, not a verdict).
    """
    text = text or ""
    lines = list(_YES_NO_LINE.finditer(text))
    if lines:
        word = lines[-1].group(1).lower()
    elif not cot and (m := _YES_NO_FIRST.match(text)):
        word = m.group(1).lower()
    else:
        why = "no 'Verdict: Yes/No' line" if cot else "the reply does not start with Yes or No and has no verdict line"
        return _unreadable(why)
    return RewardResult(1.0 if word == "yes" else 0.0, Status.OK, word, f"verdict {word}")


def parse_choice(text: str) -> RewardResult:
    """A pairwise verdict: the last ``[[A]]``/``[[B]]``/``[[C]]`` (or ``Verdict: A``).

    ``OK`` with ``value`` = P(A better): 1.0 for A, 0.0 for B, 0.5 for a tie (``C``); ``extracted``
    is ``"A"``, ``"B"`` or ``"tie"``. ``UNPARSABLE`` when there is no verdict.
    """
    found = [(m.start(), m.group(1)) for pattern in (_CHOICE_BRACKETS, _CHOICE_LABELLED) for m in pattern.finditer(text or "")]
    if not found:
        return _unreadable("no verdict found (expected [[A]], [[B]] or [[C]])")
    choice = max(found)[1]
    choice = "tie" if choice in ("C",) or choice.lower() == "tie" else choice
    value = {"A": 1.0, "B": 0.0, "tie": 0.5}[choice]
    return RewardResult(value, Status.OK, choice, f"verdict {choice}")


def combine_pairwise(first: RewardResult, swapped: RewardResult) -> RewardResult:
    """P(a better) from the verdict on (A=a, B=b) and the verdict on the swapped order (A=b, B=a).

    ``(first.value + 1 - swapped.value) / 2``. If either order could not be read the pair is
    ``UNPARSABLE``: one order alone would bring the position bias back.
    """
    if not (first.correct and swapped.correct):
        which = [name for name, r in (("original order", first), ("swapped order", swapped)) if not r.correct]
        why = "; ".join(f"{name}: {r.details}" for name, r in (("original order", first), ("swapped order", swapped))
                        if not r.correct)
        return _unreadable(f"pairwise verdict unreadable in {' and '.join(which)} ({why})")
    p = (first.value + 1.0 - swapped.value) / 2.0  # type: ignore[operator]
    extracted = "A" if p > 0.5 else "B" if p < 0.5 else "tie"
    consistent = first.extracted == {"A": "B", "B": "A", "tie": "tie"}[str(swapped.extracted)]
    note = "consistent in both orders" if consistent else "verdicts differ between orders (position bias)"
    return RewardResult(p, Status.OK, extracted, f"{first.extracted} then {swapped.extracted} swapped: {note}")


# ----------------------------------------------------------------------------------------------
# Judges
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeConfig:
    """How a judge prompts and samples its policy."""

    cot: bool = False
    """Reason first, then give the verdict on a last line (chain-of-thought judging)."""
    chat: bool = True
    """Send the prompt as one user chat message (instruct models); ``False`` sends raw text with a
    cue such as ``Rating:`` (base models without a chat template)."""
    temperature: float = 0.0
    """Sampling temperature of the verdict; 0 is greedy."""
    max_new_tokens: int | None = None
    """Tokens a verdict may take; ``None``: 512 with ``cot``, 32 without."""
    seed: int | None = 0
    """Sampling seed (the same seed gives the same verdicts)."""


@dataclass
class JudgeStats:
    """What a judge has done so far: verdicts read, verdicts that could not be read, errors."""

    scored: int = 0
    unparsable: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    """The first few reasons a verdict could not be read, for the report."""

    def record(self, results: Sequence[RewardResult]) -> None:
        for r in results:
            if r.status is Status.OK:
                self.scored += 1
            elif r.status is Status.UNPARSABLE:
                self.unparsable += 1
            else:
                self.errors += 1
            if r.status is not Status.OK and len(self.examples) < 5:
                self.examples.append(r.details)

    @property
    def total(self) -> int:
        return self.scored + self.unparsable + self.errors

    def summary(self) -> str:
        return f"{self.scored} verdicts read, {self.unparsable} unparsable, {self.errors} errors (of {self.total})"


class Judge:
    """Shared machinery: build prompts, sample the policy, count what could not be parsed."""

    kind = "judge"
    #: Range of ``RewardResult.value`` for a read verdict (used to normalise rewards to [0, 1]).
    score_range: tuple[float, float] = (0.0, 1.0)
    #: Raw-text mode: the cue the prompt ends with; it is also put back before parsing the reply.
    cue = ""

    def __init__(self, policy: Policy, config: JudgeConfig = JudgeConfig()):
        self.policy = policy
        self.config = config
        self.stats = JudgeStats()
        self.name = f"{self.kind}_judge({getattr(policy, 'name', 'policy')})"

    def _prompt(self, text: str) -> Prompt:
        if self.config.chat:
            return [{"role": "user", "content": text}]
        cue = "" if self.config.cot else self.cue
        return f"{text}\n\n{cue}".rstrip(" ") if cue else f"{text}\n\n"

    def _sampling(self, n: int = 1, temperature: float | None = None) -> SamplingParams:
        max_new = self.config.max_new_tokens or (512 if self.config.cot else 32)
        t = self.config.temperature if temperature is None else temperature
        return SamplingParams(n=n, temperature=t, max_new_tokens=max_new, seed=self.config.seed)

    def _generate(self, texts: Sequence[str], n: int = 1, temperature: float | None = None) -> list[Completion]:
        return self.policy.generate([self._prompt(t) for t in texts], self._sampling(n, temperature))

    def _reply(self, completion: Completion) -> str:
        """The reply as the parser reads it: in raw-text mode the cue the prompt ended with comes first."""
        cue = self.cue if not self.config.chat and not self.config.cot else ""
        return f"{cue} {completion.text}" if cue else completion.text

    @staticmethod
    def _explain_cut(result: RewardResult, completion: Completion) -> RewardResult:
        if result.correct or completion.finish_reason != "length":
            return result
        return _unreadable(f"{result.details} (the reply was cut off at max_new_tokens)")

    def score(self, questions: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[RewardResult]:
        """Judge each ``(question, response)``; ``references`` are optional gold answers shown to the judge."""
        if len(questions) != len(responses):
            raise UsageError(f"{len(questions)} questions for {len(responses)} responses")
        refs = list(references) if references is not None else [None] * len(questions)
        if len(refs) != len(questions):
            raise UsageError(f"{len(refs)} references for {len(questions)} questions")
        results = self._score(list(questions), list(responses), refs) if questions else []
        self.stats.record(results)
        return results

    def _score(self, questions: list[str], responses: list[str], refs: list[str | None]) -> list[RewardResult]:
        raise NotImplementedError


class PointwiseJudge(Judge):
    """A rating on ``low..high`` (default 1-10), MT-Bench single-answer style."""

    kind = "pointwise"
    cue = "Rating:"

    def __init__(self, policy: Policy, config: JudgeConfig = JudgeConfig(), low: int = 1, high: int = 10):
        super().__init__(policy, config)
        if not low < high:
            raise UsageError(f"pointwise judge needs low < high, got {low}..{high}")
        self.low, self.high = low, high
        self.score_range = (float(low), float(high))

    def prompt_text(self, question: str, response: str, reference: str | None = None) -> str:
        how = (_POINTWISE_COT if self.config.cot else _POINTWISE_DIRECT).format(low=self.low, high=self.high)
        return POINTWISE_TEMPLATE.format(question=question, response=response, how=how, **_reference_parts(reference))

    def _score(self, questions, responses, refs):
        outs = self._generate([self.prompt_text(q, r, ref) for q, r, ref in zip(questions, responses, refs)])
        return [self._explain_cut(parse_score(self._reply(c), self.low, self.high), c) for c in outs]


class RubricJudge(Judge):
    """The additive 5-point rubric (Yuan et al. 2024): ``value`` is the total points, 0-5."""

    kind = "rubric"
    cue = "Score:"
    score_range = (0.0, 5.0)

    def __init__(self, policy: Policy, config: JudgeConfig = JudgeConfig(cot=True)):
        super().__init__(policy, config)

    def prompt_text(self, question: str, response: str, reference: str | None = None) -> str:
        how = _RUBRIC_COT if self.config.cot else _RUBRIC_DIRECT
        return RUBRIC_TEMPLATE.format(question=question, response=response, how=how,
                                      reference_block=_reference_parts(reference)["reference_block"])

    def _score(self, questions, responses, refs):
        outs = self._generate([self.prompt_text(q, r, ref) for q, r, ref in zip(questions, responses, refs)])
        return [self._explain_cut(parse_score(self._reply(c), 0, 5), c) for c in outs]


def _scores_token_ids(policy: Policy) -> bool:
    return all(callable(getattr(policy, a, None)) for a in ("logprobs_of", "encode")) and hasattr(policy, "tokenizer")


class YesNoJudge(Judge):
    """``P(yes)`` for a yes/no question about the response (default: is it correct?).

    ``method``: ``"logprobs"`` (score both answers as continuations; needs a policy with
    ``logprobs_of``), ``"sample"`` (frequency of yes among ``samples`` verdicts sampled at
    ``sample_temperature``), or ``"auto"`` (logprobs when the policy supports it and ``cot`` is off:
    a chain-of-thought verdict only comes after the reasoning, so it is sampled).

    With log-probs, ``min_mass`` guards against a judge that is not answering at all: if Yes and No
    together get less than this share of its probability, the verdict is ``UNPARSABLE`` (the
    ratio of two tiny probabilities is noise, not a judgement).
    """

    kind = "yes_no"
    cue = "Answer:"
    yes_words = ("Yes", "yes")
    no_words = ("No", "no")

    def __init__(self, policy: Policy, config: JudgeConfig = JudgeConfig(), method: str = "auto", samples: int = 8,
                 sample_temperature: float = 1.0, min_mass: float = 0.05,
                 criterion: str = "Is the response a correct and complete answer to the question?"):
        super().__init__(policy, config)
        if method not in ("auto", "logprobs", "sample"):
            raise UsageError(f"yes/no judge method must be auto, logprobs or sample, got {method!r}")
        if method == "logprobs" and config.cot:
            raise UsageError("yes/no judge: method 'logprobs' scores the first answer token, so it cannot follow "
                             "chain-of-thought reasoning; use method 'sample' with cot")
        if method == "logprobs" and not _scores_token_ids(policy):
            raise UsageError(f"yes/no judge: policy {getattr(policy, 'name', policy)!r} cannot score token ids "
                             "(no logprobs_of); use method 'sample'")
        if samples < 1:
            raise UsageError(f"yes/no judge needs samples >= 1, got {samples}")
        self.method = method if method != "auto" else (
            "logprobs" if _scores_token_ids(policy) and not config.cot else "sample")
        self.samples, self.sample_temperature, self.min_mass, self.criterion = samples, sample_temperature, min_mass, criterion

    def prompt_text(self, question: str, response: str, reference: str | None = None) -> str:
        how = _YES_NO_COT if self.config.cot else _YES_NO_DIRECT
        return YES_NO_TEMPLATE.format(question=question, response=response, criterion=self.criterion, how=how,
                                      **_reference_parts(reference))

    def _score(self, questions, responses, refs):
        texts = [self.prompt_text(q, r, ref) for q, r, ref in zip(questions, responses, refs)]
        return self._by_logprobs(texts) if self.method == "logprobs" else self._by_sampling(texts)

    # -- P(yes) from log-probs ------------------------------------------------------------------
    def _candidates(self, rendered: str, words: Sequence[str]) -> list[list[int]]:
        """Token ids of each spelling of an answer as it would follow ``rendered``.

        A space goes before the word unless the prompt already ends with whitespace (a chat
        template's assistant header ends with a newline). Spellings the tokenizer cannot write
        (they do not decode back to themselves, e.g. unknown characters) are dropped.
        """
        tok = self.policy.tokenizer  # type: ignore[attr-defined]
        lead = "" if rendered[-1:].isspace() else " "
        out = []
        for w in words:
            ids = tok(lead + w, add_special_tokens=False)["input_ids"]
            if ids and tok.decode(ids, skip_special_tokens=True) == lead + w:
                out.append(ids)
        return out

    def _by_logprobs(self, texts: list[str]) -> list[RewardResult]:
        prompts = [self._prompt(t) for t in texts]
        rows_p, rows_c, owners = [], [], []  # one row per (item, candidate spelling)
        ok_items: dict[int, tuple[int, int]] = {}
        results: list[RewardResult | None] = [None] * len(texts)
        for i, prompt in enumerate(prompts):
            rendered = self.policy.render(prompt)
            ids = self.policy.encode(prompt)  # type: ignore[attr-defined]
            yes, no = self._candidates(rendered, self.yes_words), self._candidates(rendered, self.no_words)
            if not yes or not no:
                results[i] = RewardResult.error(f"the judge's tokenizer cannot write {'Yes' if not yes else 'No'}")
                continue
            ok_items[i] = (len(yes), len(no))
            for c in yes + no:
                rows_p.append(ids)
                rows_c.append(c)
                owners.append(i)
        lps = self.policy.logprobs_of(rows_p, rows_c) if rows_p else []  # type: ignore[attr-defined]
        per_item: dict[int, list[float]] = {}
        for i, lp in zip(owners, lps):
            per_item.setdefault(i, []).append(math.exp(float(lp.sum())))
        for i, (n_yes, _) in ok_items.items():
            probs = per_item[i]
            p_yes, p_no = sum(probs[:n_yes]), sum(probs[n_yes:])
            mass = p_yes + p_no
            if mass < self.min_mass:
                results[i] = _unreadable(
                    f"Yes/No get only {mass:.2%} of the judge's probability (min {self.min_mass:.0%}): it is not answering")
            else:
                results[i] = RewardResult(p_yes / mass, Status.OK, "yes" if p_yes >= p_no else "no",
                                          f"P(yes)={p_yes / mass:.3f} from log-probs, Yes/No mass {mass:.3f}")
        return [r for r in results if r is not None]

    # -- P(yes) from sampled verdicts -----------------------------------------------------------
    def _by_sampling(self, texts: list[str]) -> list[RewardResult]:
        n = self.samples
        # One greedy verdict when asked for one sample; otherwise sample to estimate a frequency.
        temperature = self.config.temperature if n == 1 else self.sample_temperature
        outs = self._generate(texts, n=n, temperature=temperature)
        results = []
        for i in range(len(texts)):
            verdicts = [self._explain_cut(parse_yes_no(self._reply(c), self.config.cot), c) for c in outs[i * n:(i + 1) * n]]
            read = [v for v in verdicts if v.correct]
            if not read:
                results.append(_unreadable(f"none of {n} sampled verdicts readable: {verdicts[0].details}"))
                continue
            yes = sum(1 for v in read if v.value == 1.0)
            p = yes / len(read)
            skipped = f", {n - len(read)} unreadable and left out" if len(read) < n else ""
            results.append(RewardResult(p, Status.OK, "yes" if 2 * yes >= len(read) else "no",
                                        f"P(yes)={p:.3f}: {yes} yes of {len(read)} sampled verdicts{skipped}"))
        return results


class PairwiseJudge(Judge):
    """Which of two responses is better, judged in both orders (see the module docstring)."""

    kind = "pairwise"
    cue = "Verdict:"

    def prompt_text(self, question: str, a: str, b: str, reference: str | None = None) -> str:
        how = _PAIRWISE_COT if self.config.cot else _PAIRWISE_DIRECT
        return PAIRWISE_TEMPLATE.format(question=question, a=a, b=b, how=how, **_reference_parts(reference))

    def compare(self, questions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                references: Sequence[str | None] | None = None) -> list[RewardResult]:
        """``value`` = P(``responses_a[i]`` is better than ``responses_b[i]``): 1, 0.5 or 0 (greedy)."""
        if not len(questions) == len(responses_a) == len(responses_b):
            raise UsageError(f"pairwise judge: {len(questions)} questions, {len(responses_a)} and {len(responses_b)} responses")
        refs = list(references) if references is not None else [None] * len(questions)
        n = len(questions)
        texts = [self.prompt_text(q, a, b, r) for q, a, b, r in zip(questions, responses_a, responses_b, refs)]
        texts += [self.prompt_text(q, b, a, r) for q, a, b, r in zip(questions, responses_a, responses_b, refs)]
        outs = self._generate(texts) if n else []
        verdicts = [self._explain_cut(parse_choice(self._reply(c)), c) for c in outs]
        results = [combine_pairwise(verdicts[i], verdicts[n + i]) for i in range(n)]
        self.stats.record(results)
        return results

    def _score(self, questions, responses, refs):
        raise UsageError("a pairwise judge compares two responses: call compare(), or use pairwise_reward()")


# ----------------------------------------------------------------------------------------------
# TRL-shaped rewards
# ----------------------------------------------------------------------------------------------

def _column(columns: Mapping[str, Any], name: str, n: int) -> list:
    if name in columns:
        return list(columns[name])
    examples = columns.get("example")
    if examples is not None and name in ("question", "answer"):
        return [getattr(e, name) for e in examples]
    raise UsageError(f"judge reward needs the {name!r} column (or an 'example' column)")


def _questions(prompts: Sequence, columns: Mapping[str, Any]) -> list[str]:
    """The question each completion answers: ``question`` column, ``Example.question``, or the prompt."""
    if "question" in columns or "example" in columns:
        qs = _column(columns, "question", len(prompts))
        if all(qs):
            return [str(q) for q in qs]
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        else:  # chat messages: the last user turn is the question
            users = [m.get("content", "") for m in p if m.get("role") == "user"]
            out.append(users[-1] if users else completion_text(p))
    return out


def _to_rewards(judge: Judge, results: Sequence[RewardResult], normalize: bool) -> list[float | None]:
    bad = [r for r in results if not r.correct]
    if bad:
        log.warning("%s: %d of %d verdicts unreadable (reward None, not a score), e.g. %s; so far: %s",
                    judge.name, len(bad), len(results), bad[0].details, judge.stats.summary())
    low, high = judge.score_range
    return [None if not r.correct else ((r.value - low) / (high - low) if normalize else r.value)  # type: ignore[operator]
            for r in results]


def judge_reward(judge: Judge, normalize: bool = True, reference_column: str | None = None) -> RewardFn:
    """A TRL-shaped reward from a pointwise, rubric or yes/no judge.

    The question comes from the ``question`` column, ``Example.question`` in the ``example`` column,
    or the prompt (the last user message). ``reference_column`` (e.g. ``"answer"``) shows each row's
    gold answer to the judge. ``normalize`` maps the verdict to ``[0, 1]`` by the judge's
    ``score_range`` (a 1-10 rating of 7 gives 2/3). Unreadable verdicts give None and are logged.
    """
    if isinstance(judge, PairwiseJudge):
        raise UsageError("a pairwise judge compares two responses: use pairwise_reward(judge, baseline_column)")

    def reward(prompts, completions, **columns):
        refs = _column(columns, reference_column, len(prompts)) if reference_column else None
        results = judge.score(_questions(prompts, columns), [completion_text(c) for c in completions], refs)
        return _to_rewards(judge, results, normalize)

    reward.__name__ = reward.__qualname__ = judge.name
    return reward


def pairwise_reward(judge: PairwiseJudge, baseline_column: str = "baseline",
                    reference_column: str | None = None) -> RewardFn:
    """A TRL-shaped reward: P(completion is better than the row's ``baseline_column`` response)."""

    def reward(prompts, completions, **columns):
        if baseline_column not in columns:
            raise UsageError(f"pairwise reward needs the {baseline_column!r} column (the response to compare against)")
        refs = _column(columns, reference_column, len(prompts)) if reference_column else None
        results = judge.compare(_questions(prompts, columns), [completion_text(c) for c in completions],
                                [str(b) for b in columns[baseline_column]], refs)
        return _to_rewards(judge, results, normalize=False)

    reward.__name__ = reward.__qualname__ = f"{judge.name}_vs_{baseline_column}"
    return reward
