"""Reading the final answer out of a model's text.

Reasoning models state their answer in a handful of conventions; :func:`extract_answer` tries them
from the most explicit to the least:

1. the last ``<answer>...</answer>`` block (the R1 / DeepSeek format);
2. the last ``\\boxed{...}`` or ``\\fbox{...}`` (MATH, Qwen-Math and most instruct models), with
   balanced, possibly nested braces;
3. a phrase: "The answer is X", "Final answer: X", "Answer: X", or GSM8K's ``#### X``;
4. optionally, the last number in the text (what GSM8K-style evaluations fall back to).

``strict=True`` is for rewards: a hedged or ambiguous answer (answers that disagree, an empty answer
block, a nested box, "19 = 18") is no answer, and there is no last-number fallback.

Extraction returns the answer *as written* (``"1,234"`` stays ``"1,234"``); deciding what it is
equal to is the verifier's job (``reasonlab.rewards.math``). Everything here is a pure function on
strings, so it is cheap enough to run in the parent process for every completion.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

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
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, without math delimiters inside it
    (``\\boxed{$38$}`` gives ``38``), or ``None``."""
    boxes = find_all_boxed(text)
    return strip_math_delimiters(boxes[-1]) if boxes else None


def strip_math_delimiters(s: str) -> str:
    """``s`` without one pair of enclosing math delimiters: ``$38$``, ``$$38$$``, ``\\(38\\)``, ``\\[38\\]``."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            return s[len(left) : -len(right)].strip()
    return s


def _clean(answer: str) -> str:
    """Trim an answer phrase to the answer: first line, first sentence, no math delimiters."""
    s = answer.strip().split("\n", 1)[0].strip()
    # End of sentence: a period followed by whitespace (a decimal point is followed by a digit).
    s = re.split(r"\.(?=\s)", s, maxsplit=1)[0]
    s = s.strip().strip("*").strip()  # markdown bold: **42**
    s = strip_math_delimiters(s.rstrip(".,;:!?"))
    return s.rstrip(".").strip()


def _phrase_answer(text: str, m: re.Match) -> str | None:
    """The answer a phrase match introduces: the rest of its line, cleaned (see _from_phrase)."""
    phrase = text[m.end() :].split("\n", 1)[0]
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


def _phrase_matches(text: str) -> list[re.Match]:
    starts = [m for pattern in _PHRASES for m in pattern.finditer(text)]
    # Skip phrases with nothing after them on their line ("the answer is\n\n" from a truncation).
    return sorted((m for m in starts if text[m.end() :].split("\n", 1)[0].strip()), key=lambda m: m.start())


def _from_phrase(text: str) -> str | None:
    matches = _phrase_matches(text)
    return _phrase_answer(text, matches[-1]) if matches else None


# ---- strict extraction (rewards): an ambiguous answer is no answer --------------------------------

_NESTED_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_LONE_VARIABLE = re.compile(r"^\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*$")  # "x", "n_1", "\\theta"
_ARITH_CHARS = re.compile(r"^[\d\s.+\-*/()]+$")
_ARITH_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b}


def _norm(answer: str) -> str:
    return re.sub(r"\s+|\$", "", answer).rstrip(".")


def _agree(answers: list[str]) -> str | None:
    """The last answer if all agree (as written, spacing aside), else None."""
    return answers[-1] if answers and len({_norm(a) for a in answers}) == 1 else None


def _strict_statement(statement: str) -> str | None | bool:
    """The answer one statement (an answer block, a phrase's line) gives; False if it is ambiguous.

    A statement with boxes: the boxes must agree, none may hold another box, and no digit may stand
    outside them ("19 \\boxed{18}" says two things). "19 = 18" (a number equated to another) is
    ambiguous too; "160 + 150 = 310" still gives 310.
    """
    boxes = find_all_boxed(statement)
    if boxes:
        if any(_NESTED_BOX.search(b) for b in boxes):
            return False
        outside = _BOX_BARE.sub(" ", statement)
        for b in boxes:
            outside = outside.replace(b, " ", 1)
        if re.search(r"\d", outside):
            return False
        return _agree(boxes) or False
    parts = re.split(r"(?<![<>!=])=(?!=)", statement)
    if len(parts) > 1:
        lhs, rhs = _clean(parts[-2]), _clean(parts[-1])
        if _LONE_VARIABLE.match(lhs):
            return None  # "x = 5"
        left, right = _arith_value(lhs), _arith_value(rhs)
        if left is None or right is None or left != right:
            return False  # "19 = 18", "\\frac{3}{4}+1 = \\frac{3}{4}": not a true calculation ending in the answer
    return None



def _arith_value(expr: str) -> Fraction | None:
    """Exact value of plain arithmetic ("160 + 150", "3 \\times 4", "1,000"), or None for anything else."""
    s = expr.replace("$", "").replace(",", "")
    for op, py in (("\\times", "*"), ("\\cdot", "*"), ("\u00d7", "*"), ("\\div", "/"), ("\u00f7", "/")):
        s = s.replace(op, py)
    if not s.strip() or not _ARITH_CHARS.match(s) or "**" in s:
        return None
    try:
        tree = ast.parse(s.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
            return _ARITH_OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not plain arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError):
        return None


def _strict_answer(text: str) -> str | None:
    tags = _ANSWER_TAG.findall(text)
    if tags:
        content = tags[-1].strip()
        if not content or len({_norm(t) for t in tags}) > 1:
            return None  # an empty answer block, or answer blocks that disagree
        boxed = _strict_statement(content)
        if boxed is False:
            return None
        if boxed:
            return boxed
        phrases = [a for m in _phrase_matches(content) if (a := _phrase_answer(content, m))]
        inner = _agree(phrases) if phrases else _clean(content) or content
        return inner if inner and _strict_statement(inner) is not False else None
    boxes = find_all_boxed(text)
    phrase_answers: list[str] = []
    for m in _phrase_matches(text):
        line = text[m.end():].split("\n", 1)[0]
        verdict = _strict_statement(line)
        if verdict is False:
            return None
        answer = _phrase_answer(text, m)
        if answer and re.search(r"\d", answer):  # phrases in prose ("the answer is not obvious") do not count
            phrase_answers.append(answer)
    if any(_NESTED_BOX.search(b) for b in boxes) or any(not b.strip() for b in boxes[-1:]):
        return None
    candidates = boxes + phrase_answers
    return _agree(candidates) if candidates else None


def extract_answer(text: str, *, last_number_fallback: bool = True, strict: bool = False) -> str | None:
    """The final answer stated in ``text``, or ``None`` if it states none.

    See the module docstring for the order of the rules. ``last_number_fallback=False`` turns off
    rule 4, for callers that want an explicitly stated answer only (format rewards, strict evals).

    ``strict=True`` (rewards) refuses an ambiguous answer instead of taking the last one: an empty
    last answer block is no answer (no falling through to boxes or numbers); answer blocks, boxes
    and answer phrases that disagree give None, as do nested boxes, digits outside the box of an
    answer statement, and "19 = 18". It never falls back to the last number.
    """
    if not text:
        return None
    if strict:
        return _strict_answer(text)
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
