"""Code verification, HumanEval-style: run the model's function against the task's unit tests.

The program that runs is ``prompt + completion + test + check(entry_point)``, the HumanEval
convention (the prompt holds the signature and docstring; a base model's completion is the body).
Chat models usually answer with a whole function in a fenced block instead; when the extracted code
defines ``entry_point`` itself, it runs on its own, after the prompt's import lines (``from typing
import List``), which such answers often leave out.

The program runs in :func:`reasonlab.rewards.sandbox.run_python`. Outcomes:
exit 0 -> ``OK`` (1.0); an assertion or any other exception -> ``WRONG`` (details: the last line of
stderr); code that does not compile -> ``UNPARSABLE`` (checked in the parent with ``compile``, which
never runs the code); wall-clock or CPU limit -> ``TIMEOUT``; the sandbox itself failing -> ``ERROR``.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from reasonlab.rewards.sandbox import SandboxLimits, run_python
from reasonlab.types import RewardResult

__all__ = ["CodeVerifier", "extract_code", "build_program"]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code in a completion: a fenced block if there is one, else the raw text.

    Among fenced blocks, the first that defines ``entry_point`` wins (when given), then the first
    block tagged ``python``/``py``, then the first untagged block. An unclosed fence (a truncated
    completion) runs to the end of the text.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    if not blocks:
        return completion
    if entry_point:
        for _, body in blocks:
            if _defines(body, entry_point):
                return body
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    for lang, body in blocks:
        if not lang:
            return body
    return completion


def _prompt_imports(prompt: str) -> str:
    return "\n".join(line for line in prompt.splitlines() if re.match(r"(?:import|from)\s+\w", line))


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program :meth:`CodeVerifier.score` runs (see the module docstring)."""
    code = extract_code(completion, entry_point)
    if _defines(code, entry_point):
        solution = _prompt_imports(prompt) + "\n\n" + code
    else:
        solution = prompt + code
    return solution + "\n" + test + f"\ncheck({entry_point})\n"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("[sandbox:")]
    return lines[-1].strip() if lines else ""


class CodeVerifier:
    """Scores code completions by running the task's tests in the sandbox.

    ``workers`` sandboxes run at once in :meth:`score_many` (each is a separate process; threads
    only wait on them).
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(timeout=10), workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.limits = limits
        self.workers = workers

    def score(self, prompt: str, completion: str, test: str, entry_point: str) -> RewardResult:
        program = build_program(prompt, completion, test, entry_point)
        try:
            compile(program, "solution.py", "exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: null bytes
            return RewardResult.unparsable(f"{type(e).__name__}: {e}")
        try:
            result = run_python(program, self.limits)
        except OSError as e:  # no temp dir, no process slots, ...: the check itself failed
            return RewardResult.error(f"sandbox failed: {type(e).__name__}: {e}")
        if result.status == "ok":
            return RewardResult.ok(details=f"passed in {result.duration:.2f}s")
        if result.status == "timeout":
            return RewardResult.timeout(details=_last_line(result.stderr) or f"exceeded {self.limits.timeout:g}s")
        if result.status == "error":
            return RewardResult.error(f"sandbox failed: {_last_line(result.stderr)}")
        last = _last_line(result.stderr) or f"exit code {result.returncode}"
        # A SyntaxError at run time comes from the program's own compile()/eval(), not the answer
        # (the answer itself compiled above), so it is a wrong answer like any other exception.
        return RewardResult.wrong(details=last)

    def score_many(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        tests: Sequence[str],
        entry_points: Sequence[str],
    ) -> list[RewardResult]:
        """:meth:`score` for many items, ``workers`` at a time; results in input order."""
        n = len(completions)
        if not len(prompts) == len(tests) == len(entry_points) == n:
            raise ValueError(
                f"lengths differ: {len(prompts)} prompts, {n} completions, {len(tests)} tests, {len(entry_points)} entry points"
            )
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.score, prompts, completions, tests, entry_points))

    def close(self) -> None:
        """Nothing to release (sandboxes are per call); present for symmetry with MathVerifier."""
