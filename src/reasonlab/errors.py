"""Errors a user can act on.

A :class:`UsageError` is raised for anything the user asked for that cannot be done: an unknown
model, task or path, a malformed data row, an unreachable server. The CLI prints its message as one
line and exits with code 2; the library lets it propagate like any other exception.
"""

from __future__ import annotations

import sys


class ReasonlabError(Exception):
    """Base class for errors reasonlab raises on purpose."""


class UsageError(ReasonlabError):
    """The request cannot be served as asked (bad name, path, data or setting). CLI exit code 2."""

    exit_code = 2


class DataError(UsageError):
    """A data file has malformed rows. ``problems`` holds ``(line_number, reason)`` pairs."""

    def __init__(self, path: str, problems: list[tuple[int, str]], total: int | None = None):
        self.path = path
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        of = f" of {total}" if total is not None else ""
        super().__init__(f"{path}: {len(problems)}{of} malformed rows — {shown}{more}")


class BackendError(ReasonlabError):
    """A policy backend failed at run time (server unreachable after retries, model crashed)."""

    exit_code = 1


def print_error(e: BaseException, kind: str = "error") -> None:
    """Print ``e`` as every command reports a failure: one line, ``reasonlab: <kind>: <message>``, on stderr."""
    print(f"reasonlab: {kind}: {e}", file=sys.stderr)
