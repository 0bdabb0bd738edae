"""Reading task data files: JSONL rows with line numbers, and split files in a data directory.

Every dataset the tasks read is JSON Lines (optionally gzip-compressed, as HumanEval ships). A bad
row is reported with its line number so the user can open the file and fix it; by default the whole
file is refused (``on_bad="error"``), because silently evaluating on fewer rows than asked skews
every number computed afterwards. ``on_bad="skip"`` drops bad rows and logs which ones.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from reasonlab.errors import DataError, UsageError

log = logging.getLogger(__name__)

#: A row check: returns why a (parsed, field-complete) row is unusable, or ``None`` if it is fine.
RowCheck = Callable[[dict], Optional[str]]
#: A row parser: returns the row in its normalised form, or raises ValueError saying what is wrong.
RowParse = Callable[[Any], dict]


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_jsonl(
    path: str | Path,
    required: Sequence[str] = (),
    on_bad: Literal["error", "skip"] = "error",
    check: RowCheck | None = None,
    parse: RowParse | None = None,
) -> list[tuple[int, dict]]:
    """Read a JSONL file into ``(line_number, row)`` pairs (line numbers start at 1).

    Blank lines are skipped. A row is malformed when it is not valid JSON (or not UTF-8), not a JSON
    object, lacks a ``required`` field or has it empty (``None`` or blank text), or when ``check``
    returns a reason, or when ``parse`` (which replaces each row with its normalised form) raises
    ``ValueError``; ``parse`` sees any JSON value, so it checks the row's type itself. Malformed rows
    raise one :class:`DataError` listing their line numbers
    (``on_bad="error"``), or are dropped with a logged warning naming them (``on_bad="skip"``).
    A missing file or a file with no rows raises :class:`UsageError`.
    """
    if on_bad not in ("error", "skip"):
        raise UsageError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"data file not found: {p}")
    if not p.is_file():
        raise UsageError(f"not a file: {p}")

    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[tuple[int, dict]] = []
    problems: list[tuple[int, str]] = []
    total = 0
    try:
        with opener(p, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                total += 1
                why = _row_problem(raw, required, check, parse)
                if isinstance(why, str):
                    problems.append((lineno, why))
                else:
                    rows.append((lineno, why))
    except (OSError, EOFError) as e:  # unreadable file, truncated gzip
        raise UsageError(f"cannot read {p}: {e}") from e

    if total == 0:
        raise UsageError(f"{p} contains no rows")
    if problems:
        if on_bad == "error" or not rows:  # a file with no usable row is an error either way
            raise DataError(str(p), problems, total=total)
        lines = ", ".join(str(n) for n, _ in problems[:20]) + (" ..." if len(problems) > 20 else "")
        log.warning("%s: skipped %d of %d malformed rows (lines %s)", p, len(problems), total, lines)
    return rows


def _row_problem(raw: bytes, required: Sequence[str], check: RowCheck | None,
                 parse: RowParse | None = None) -> dict | str:
    """The parsed row, or the reason it is malformed."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except json.JSONDecodeError as e:
        return f"invalid JSON ({e.msg} at column {e.colno})"
    if parse is not None:
        try:
            row = parse(row)
        except ValueError as e:
            return str(e)
    if not isinstance(row, dict):
        return f"not a JSON object (got {type(row).__name__})"
    missing = [k for k in required if k not in row]
    if missing:
        return "missing field " + ", ".join(repr(k) for k in missing)
    empty = [k for k in required if _is_empty(row[k])]
    if empty:
        return "empty field " + ", ".join(repr(k) for k in empty)
    if check is not None:
        why = check(row)
        if why:
            return why
    return row


def split_file(path: str | Path, split: str) -> Path:
    """The file holding ``split``: ``path`` itself when it is a file, else ``<path>/<split>.jsonl``.

    A single file serves every split (the user named exactly the data to use); a directory holds one
    file per split, as the GSM8K release does (``train.jsonl``, ``test.jsonl``).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise UsageError(f"data path not found: {p}")
    for candidate in (p / f"{split}.jsonl", p / f"{split}.jsonl.gz"):
        if candidate.is_file():
            return candidate
    have = sorted(q.name for q in p.iterdir() if q.name.endswith((".jsonl", ".jsonl.gz")))
    raise UsageError(f"no '{split}' split in {p}: expected {split}.jsonl (found: {', '.join(have) or 'no .jsonl files'})")


def as_text(value: Any) -> str:
    """A JSON field as text: numbers (a common form of gold answers) become their string form."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
