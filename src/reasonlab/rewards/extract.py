"""Reading the final answer out of a model's text.

Reasoning models state their answer in a handful of conventions; :func:`extract_answer` tries them
from the most explicit to the least:

1. the last ``<answer>...</answer>`` block (the R1 / DeepSeek format);
2. the last ``\\boxed{...}`` or ``\\fbox{...}`` (MATH, Qwen-Math and most instruct models), with
   balanced, possibly nested braces;
3. a phrase: "The answer is X", "Final answer: X", "Answer: X", or GSM8K's ``#### X``;
4. optionally, the last number in the text (what GSM8K-style evaluations fall back to).

Extraction returns the answer *as written* (``"1,234"`` stays ``"1,234"``); deciding what it is
equal to is the verifier's job (``reasonlab.rewards.math``). Everything here is a pure function on
strings, so it is cheap enough to run in the parent process for every completion.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_boxed", "find_all_boxed", "gsm8k_gold"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# \boxed{...} and \fbox{...}; the brace matching is done by hand since regexes can't balance braces.
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "\boxed 5" (no braces) is legal LaTeX for a single token, and MATH solutions use it occasionally.
_BOX_BARE = re.compile(r"\\boxed\s+([^\s{$][^\s$]*)")

# Phrases that introduce a final answer. The answer is the rest of that line, cut at the end of the
# sentence by _clean(); of all matches, the one that starts last wins.
_PHRASES = [
    re.compile(r"final\s+answer\s*(?:is|:)\s*:?", re.IGNORECASE),
    re.compile(r"the\s+answer\s+is\s*:?", re.IGNORECASE),
    re.compile(r"(?:^|(?<=[\s*]))answer\s*:", re.IGNORECASE),
    re.compile(r"####"),
]

# A number as people write it: optional sign, thousands separators, decimals, a fraction a/b.
# The sign only counts when it does not follow a word or a closing bracket ("x-3" is not "-3"...
# but "= -3" is).
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?"
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*\d+(?:\.\d+)?)?"
)


def find_all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order, braces balanced.

    An unclosed box (a truncated completion) is skipped rather than read to the end of the text.
    """
    found: list[tuple[int, str]] = []  # (position, content)
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            break
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # \{ and \} are literal braces (sets), not grouping
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append((m.start(), text[m.end() : i - 1].strip()))
            pos = i
        else:
            pos = m.end()
    found += [(m.start(), m.group(1)) for m in _BOX_BARE.finditer(text)]
    return [content for _, content in sorted(found)]


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, or ``None``."""
    boxes = find_all_boxed(text)
    return boxes[-1] if boxes else None


def _clean(answer: str) -> str:
    """Trim an answer phrase to the answer: first line, first sentence, no math delimiters."""
    s = answer.strip().split("\n", 1)[0].strip()
    # End of sentence: a period followed by whitespace (a decimal point is followed by a digit).
    s = re.split(r"\.(?=\s)", s, maxsplit=1)[0]
    s = s.strip().strip("*").strip()  # markdown bold: **42**
    s = s.rstrip(".,;:!?").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
            break
    return s.rstrip(".").strip()


def _from_phrase(text: str) -> str | None:
    starts = [m for pattern in _PHRASES for m in pattern.finditer(text)]
    # Skip phrases with nothing after them on their line ("the answer is\n\n" from a truncation).
    starts = [m for m in starts if text[m.end() :].split("\n", 1)[0].strip()]
    if not starts:
        return None
    last = max(starts, key=lambda m: m.start())
    phrase = text[last.end() :].split("\n", 1)[0]
    boxed = extract_boxed(phrase)
    if boxed is not None:
        return boxed
    answer = _clean(phrase)
    # "The final answer is 160 + 150 = 310": the answer is the result, after the last bare "="
    # ("<=", ">=", "!=" are relations, not results).
    parts = re.split(r"(?<![<>!=])=(?!=)", answer)
    if len(parts) > 1 and parts[-1].strip():
        answer = _clean(parts[-1])
    return answer or None


def extract_answer(text: str, *, last_number_fallback: bool = True) -> str | None:
    """The final answer stated in ``text``, or ``None`` if it states none.

    See the module docstring for the order of the rules. ``last_number_fallback=False`` turns off
    rule 4, for callers that want an explicitly stated answer only (format rewards, strict evals).
    """
    if not text:
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags:
        content = tags[-1].strip()
        if content:
            # Inside the tag, an explicit box or phrase still wins: "<answer>The answer is 5</answer>".
            inner = extract_boxed(content) or _from_phrase(content)
            return inner if inner else _clean(content) or content
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    phrase = _from_phrase(text)
    if phrase:
        return phrase
    if last_number_fallback:
        numbers = _NUMBER.findall(text)
        if numbers:
            return re.sub(r"\s+", "", numbers[-1])
    return None


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K row: the text after the last ``####``, commas removed."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return answer_field.rsplit("####", 1)[1].replace(",", "").strip()
