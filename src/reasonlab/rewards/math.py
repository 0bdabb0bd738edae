"""Math answer verification: is the answer in a completion equal to the gold answer?

The check runs in two stages, cheapest first:

1. **In the parent process**, both answers are read as plain numbers when they are ones: dollar
   signs, thousands separators (``1,000``), ``\\text{...}``, trailing units or words (``5 cm``,
   ``12 apples``) and ``%`` are stripped, and ``\\frac{a}{b}`` / ``a/b`` / decimals become exact
   fractions. Two numbers are compared with a relative tolerance. This settles almost every GSM8K-
   style answer in microseconds.
2. Otherwise **math-verify** (Hugging Face's sympy-based checker) decides, in a
   :class:`~reasonlab.rewards.workers.WorkerPool` with a hard per-call timeout: sympy can hang for
   ever on ``9^{9^{9^9}}``, and math-verify's own ``signal.alarm`` timeout does not work off the main
   thread. ``verify(parse(gold), parse(pred))`` is called gold first, as math-verify is designed
   (the comparison is not symmetric for equations and intervals).

Outcomes map to :class:`~reasonlab.types.RewardResult`: no answer in the completion, or one that
cannot be read as math, is ``UNPARSABLE``; a mismatch is ``WRONG``; a check that ran out of time is
``TIMEOUT`` and one that crashed is ``ERROR`` (value ``None``, never a silent 0).

Percentages: ``50%`` equals both ``50`` and ``0.5`` in :meth:`MathVerifier.score` (as in
math-verify, since "what percent..." questions are answered both ways), and :func:`answer_key`
drops the ``%`` sign, so ``50%`` votes with ``50``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Sequence

from reasonlab.rewards.extract import extract_answer, strip_math_delimiters
from reasonlab.rewards.workers import Outcome, WorkerPool
from reasonlab.types import RewardResult

__all__ = ["MathVerifierConfig", "MathVerifier", "answer_key", "parse_number", "strict_prediction"]


@dataclass(frozen=True)
class MathVerifierConfig:
    timeout: float = 5.0
    """Seconds one math-verify comparison may take before its worker is killed (status timeout)."""
    workers: int = 1
    """Worker processes for math-verify comparisons (score_many runs that many at once)."""
    rel_tol: float = 1e-6
    """Relative tolerance when both answers are plain numbers (two integers must match exactly)."""
    strict: bool = False
    """Refuse hedged or ambiguous answers, as a reward must: strict extraction (``extract_answer(strict=True)``:
    disagreeing answers, empty answer blocks and nested boxes give no answer; no last-number fallback); a
    plain number is required when the gold is one; an answer that negates, strikes out or hides part of
    itself (``\\neg``, ``\\cancel``, ``\\phantom``, "not", "wrong") or equates two values (``19 = 18``) is
    unparsable. ``x = 5`` still reads as 5."""


# --------------------------------------------------------------------------------------------
# Stage 1: plain numbers, in the parent process.

# Words that look like units but are math: "2 pi" is not 2.
_MATH_WORDS = {"pi", "sqrt", "e", "i", "inf", "infty", "infinity", "sin", "cos", "tan", "log", "ln", "mod", "times", "cdot"}
# Units that may be glued to the number ("5cm"); other trailing words need a space ("5 apples").
_GLUED_UNITS = {"cm", "mm", "km", "m", "kg", "g", "mg", "lb", "lbs", "oz", "ft", "s", "sec", "min", "h", "hr", "hrs", "ml", "l", "mph", "st", "nd", "rd", "th"}
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?"
_PLAIN = re.compile(rf"^({_NUM})(?:\s*/\s*({_NUM}))?$")
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))$")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_TRAILING_WORD = re.compile(r"^(.*?)(\s*)([A-Za-z][A-Za-z.'’]*)$")
_MAX_NUMBER_CHARS = 200  # longer "numbers" go to the worker pool, where a timeout protects us


def _strip_decorations(s: str) -> tuple[str, bool]:
    """Remove what is not part of a number's value. Returns (rest, had_percent_sign)."""
    s = _TEXT_CMD.sub(r" \1 ", s)
    for junk in ("\\$", "$", "\\!", "\\,", "\\;", "\\:", "\\ ", "~", "{,}", "\\left", "\\right", "^\\circ", "^{\\circ}", "°"):
        s = s.replace(junk, " " if junk in ("\\ ", "~") else "")
    s = s.strip().rstrip(".").strip()
    pct = False
    if s.endswith("\\%") or s.endswith("%"):
        pct = True
        s = s[: -2 if s.endswith("\\%") else -1].strip()
    # Trailing words, last first: "5 dollars", "12 apples per day", "5cm". A glued word must be a
    # known unit ("5x" is not 5), and math words end the stripping ("2 pi" is not 2).
    while True:
        m = _TRAILING_WORD.match(s)
        if m is None or not any(c.isdigit() for c in m.group(1)):
            break
        head, space, word = m.groups()
        w = word.lower().rstrip(".")
        if w in _MATH_WORDS or not (w in _GLUED_UNITS or (space and len(w) >= 2)):
            break
        s = head.strip()
        if s.endswith("%"):
            pct = True
            s = s[: -2 if s.endswith("\\%") else -1].strip()
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    return s.strip(), pct


def parse_number(answer: str) -> tuple[Fraction, bool] | None:
    """Read ``answer`` as a plain number: ``(exact value, had a % sign)``, or ``None``.

    Accepts ``-3``, ``1,234.5``, ``.5``, ``3/4``, ``\\frac{3}{4}``, ``\\dfrac12``, ``$5``,
    ``5 dollars``, ``5cm``, ``\\text{5 cm}``, ``50%``, ``1e-3``. Anything with a variable, an operator
    or an unknown command is not a plain number.
    """
    if not answer or len(answer) > _MAX_NUMBER_CHARS:
        return None
    s, pct = _strip_decorations(answer.strip())
    if not s:
        return None
    m = _PLAIN.match(s)
    if m:
        try:
            value = Fraction(m.group(1))
            if m.group(2) is not None:
                denominator = Fraction(m.group(2))
                if denominator == 0:
                    return None
                value /= denominator
        except (ValueError, ZeroDivisionError):
            return None
        return value, pct
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
        inner_num, inner_den = parse_number(num), parse_number(den)
        if inner_num is None or inner_den is None or inner_den[0] == 0:
            return None
        value = inner_num[0] / inner_den[0]
        return (-value if sign == "-" else value), pct
    return None


def _numbers_equal(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    # Exact fractions: no float overflow for huge integers, and 0.1 + 0.2 style noise cannot occur.
    # Two integers must match exactly: 1000001 is not 1000000, whatever the tolerance.
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


def _numeric_match(gold: tuple[Fraction, bool], pred: tuple[Fraction, bool], rel_tol: float) -> bool:
    (g, g_pct), (p, p_pct) = gold, pred
    if _numbers_equal(g, p, rel_tol):
        return True
    # Exactly one side is a percentage: "50%" also equals 0.5 (see the module docstring).
    if g_pct != p_pct:
        return _numbers_equal(g / 100, p, rel_tol) if g_pct else _numbers_equal(g, p / 100, rel_tol)
    return False


# --------------------------------------------------------------------------------------------
# Majority-vote keys.

_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\displaystyle|\s+")


def _normalize_text(answer: str) -> str:
    s = _TEXT_CMD.sub(r"\1", answer)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LATEX_NOISE.sub("", s)
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left) : -len(right)]
    return s.rstrip(".")


def answer_key(answer: str | None) -> Hashable | None:
    """A cheap canonical key for majority voting; equal keys mean equivalent answers.

    Plain numbers map to their exact value (``"1/2"``, ``"0.5"``, ``"\\frac{1}{2}"`` and
    ``"\\dfrac12"`` share a key, as do ``"1,000"``, ``"1000"`` and ``"$1000"``; ``"50%"`` keys as
    ``50``). Anything else maps to its text with whitespace and LaTeX spacing removed. Inexact
    equivalences (``0.333`` vs ``1/3``, ``x+1`` vs ``1+x``) get different keys: use
    :meth:`MathVerifier.equivalent` to merge those. ``None`` (no answer) stays ``None``.
    """
    if answer is None:
        return None
    # Delimiters are notation, not answer: \(38\) from \boxed{\(38\)} votes with 38.
    answer = strip_math_delimiters(answer)
    number = parse_number(answer)
    if number is not None:
        return ("number", number[0])
    text = _normalize_text(answer)
    return ("text", text) if text else None


# --------------------------------------------------------------------------------------------
# Stage 2: math-verify, in worker processes.


def _warm_up() -> None:
    """Worker initializer: import math-verify and build its parsers before the first timed call."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we time out
    math_verify.verify(
        math_verify.parse("$\\frac{1}{2}$", parsing_timeout=None),
        math_verify.parse("$0.5$", parsing_timeout=None),
        timeout_seconds=None,
    )


def _parse(text: str) -> list:
    from math_verify import parse

    # The boxed form makes math-verify read the whole answer as LaTeX ("\frac12", "[1,2)", "{1,2}"
    # are not found in bare text); the bare text is the fallback for plain expressions.
    for candidate in (f"\\boxed{{{text}}}", text):
        parsed = parse(candidate, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _verify_in_worker(gold: str, pred: str) -> str:
    """Runs in a worker: ``"ok"``, ``"wrong"``, ``"unparsable"`` or ``"bad_gold"``.

    math-verify's own timeouts are disabled (``None``); the pool's hard timeout replaces them.
    """
    from math_verify import verify

    gold_parsed = _parse(gold)
    if not gold_parsed:
        return "bad_gold"
    pred_parsed = _parse(pred)
    if not pred_parsed:
        return "unparsable"
    return "ok" if verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=False) else "wrong"


# Answers that are prose, not math ("I don't know", "no idea"): math-verify would read them as a
# product of single-letter symbols. Two or more words of two or more letters, and nothing else.
_PROSE = re.compile(r"^[A-Za-z'’]+(?:[\s,]+[A-Za-z'’]+)+[.!?]?$")


def _is_prose(answer: str) -> bool:
    words = re.findall(r"[A-Za-z'’]{2,}", answer)
    return bool(_PROSE.match(answer.strip())) and len(words) >= 2


_SELF_NEGATING = re.compile(
    r"\\(?:neg|lnot|not)(?![a-zA-Z])|\\(?:cancel|bcancel|xcancel|sout|phantom|hphantom|vphantom)\s*\{"
    r"|\b(?:not|no|wrong|incorrect|false|never)\b",
    re.IGNORECASE,
)
_BARE_EQUALS = re.compile(r"(?<![<>!=\\])=(?!=)")
_LONE_VARIABLE = re.compile(r"^\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*$")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{[^{}]*\}")


def _prose_words(s: str) -> set[str]:
    """Words of four or more letters written outside LaTeX commands and \\text{} (units, words in math mode)."""
    s = re.sub(r"\\[A-Za-z]+", " ", _TEXT_GROUP.sub(" ", s))
    return {w.lower() for w in re.findall(r"[A-Za-z]{4,}", s)}


def strict_prediction(gold: str, pred: str) -> tuple[str | None, RewardResult | None]:
    """Strict mode: ``(prediction to compare, None)``, or ``(None, the verdict)`` when it is refused."""
    if _SELF_NEGATING.search(pred) and not _SELF_NEGATING.search(gold):
        return None, RewardResult.unparsable(f"the answer negates, strikes out or hides part of itself: {pred[:80]!r}")
    if _BARE_EQUALS.search(pred) and not _BARE_EQUALS.search(gold):
        lhs, rhs = _BARE_EQUALS.split(pred)[-2:]
        if not _LONE_VARIABLE.match(lhs) or not rhs.strip():
            return None, RewardResult.unparsable(f"an equation between values, not an answer: {pred[:80]!r}")
        pred = rhs.strip()
    if "?" in pred or _prose_words(pred) - _prose_words(gold):
        return None, RewardResult.unparsable(f"the answer is prose, not math: {pred[:80]!r}")
    if parse_number(gold) is not None and parse_number(pred) is None:
        return None, RewardResult.wrong(pred, "the gold answer is a number and this answer is not one")
    return pred, None


class MathVerifier:
    """Judges math answers; see the module docstring. Close it (or use ``with``) to stop workers."""

    def __init__(self, config: MathVerifierConfig = MathVerifierConfig()):
        self.config = config
        self._pool = WorkerPool(_verify_in_worker, workers=config.workers, timeout=config.timeout, initializer=_warm_up)

    # The parent-side part of a comparison: a result, or None when math-verify has to decide.
    def _quick(self, gold: str, pred: str) -> RewardResult | None:
        if answer_key(gold) == answer_key(pred):
            return RewardResult.ok(pred)
        gold_number, pred_number = parse_number(gold), parse_number(pred)
        if gold_number is not None and pred_number is not None:
            if _numeric_match(gold_number, pred_number, self.config.rel_tol):
                return RewardResult.ok(pred)
            return RewardResult.wrong(pred)
        if _is_prose(pred):
            # Prose against a prose gold ("no solution") is a wrong answer; against math, no answer.
            if _is_prose(gold):
                return RewardResult.wrong(pred)
            return RewardResult.unparsable(f"answer is prose, not math: {pred[:80]!r}")
        return None

    def score(self, gold: str, completion: str) -> RewardResult:
        """Extract the answer from ``completion`` and judge it against ``gold``."""
        return self.score_many([gold], [completion])[0]

    def score_many(self, golds: Sequence[str], completions: Sequence[str]) -> list[RewardResult]:
        """:meth:`score` for many pairs; math-verify comparisons run in parallel in the pool."""
        if len(golds) != len(completions):
            raise ValueError(f"{len(golds)} gold answers for {len(completions)} completions")
        results: list[RewardResult | None] = [None] * len(golds)
        slow: list[tuple[int, str, str]] = []  # (index, gold, prediction) for math-verify
        for i, (gold, completion) in enumerate(zip(golds, completions)):
            strict = self.config.strict
            pred = extract_answer(completion, strict=strict, last_number_fallback=not strict)
            if pred is None or not pred.strip():
                results[i] = RewardResult.unparsable("no answer found in the completion" if not strict
                                                     else "no unambiguous answer found in the completion")
                continue
            gold, pred = strip_math_delimiters(gold), strip_math_delimiters(pred)
            if strict:
                pred, refused = strict_prediction(gold, pred)  # type: ignore[assignment]
                if refused is not None:
                    results[i] = refused
                    continue
            results[i] = self._quick(gold, pred)
            if results[i] is None:
                slow.append((i, gold, pred))
        outcomes = self._pool.map([(gold, pred) for _, gold, pred in slow]) if slow else []
        for (i, gold, pred), outcome in zip(slow, outcomes):
            results[i] = self._from_outcome(outcome, gold, pred)
        return [r for r in results if r is not None]

    def _from_outcome(self, outcome: Outcome, gold: str, pred: str) -> RewardResult:
        if outcome.status == "timeout":
            return RewardResult.timeout(pred, f"math-verify: {outcome.error}")
        if outcome.status == "error":
            return RewardResult.error(f"math-verify: {outcome.error}", pred)
        verdict = outcome.value
        if verdict == "ok":
            return RewardResult.ok(pred)
        if verdict == "wrong":
            return RewardResult.wrong(pred)
        if verdict == "unparsable":
            return RewardResult.unparsable(f"math-verify could not parse the answer {pred[:80]!r}")
        return RewardResult.error(f"math-verify could not parse the gold answer {gold[:80]!r}", pred)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two extracted answers are the same (for merging majority-vote groups).

        ``a`` plays the gold role. A comparison that times out or fails counts as "not
        equivalent": the answers then simply stay in separate groups.
        """
        a, b = strip_math_delimiters(a), strip_math_delimiters(b)
        quick = self._quick(a, b)
        if quick is not None:
            return quick.correct
        outcome = self._pool.map([(a, b)])[0]
        return outcome.status == "ok" and outcome.value == "ok"

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
