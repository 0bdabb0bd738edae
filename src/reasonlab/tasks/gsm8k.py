"""GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"): grade-school math.

Rows are ``{"question": ..., "answer": ...}``; the gold answer is the text after the last ``####``
of ``answer`` (commas removed), and the reasoning before it, without its ``<<48/2=24>>`` calculator
annotations, is the worked solution few-shot prompts show. Any JSONL file in this format works.

Where the data is, when no path is given (first that exists):
``$REASONLAB_GSM8K_DIR``, ``<repository>/../shared/data/gsm8k`` (the repository holding this
package's source), ``./shared/data/gsm8k``. Each holds ``train.jsonl`` and ``test.jsonl``.

Example ids are ``gsm8k/<split>/<0-based row>`` (``gsm8k/test/17``); completions are scored with the
math verifier. Few-shot examples are the first ``num_fewshot`` rows of the train split.

    task = GSM8KTask(prompt_format="fewshot")
    examples = task.examples("test", limit=50)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reasonlab.errors import UsageError
from reasonlab.tasks.jsonl import Columns, JsonlTask

if TYPE_CHECKING:
    from reasonlab.rewards.math import MathVerifierConfig

ENV_VAR = "REASONLAB_GSM8K_DIR"


def default_data_dir() -> Path:
    """The first GSM8K data directory that exists (see the module docstring); UsageError if none."""
    env = os.environ.get(ENV_VAR)
    if env:  # an explicit setting that points nowhere is an error, not a reason to look elsewhere
        p = Path(env).expanduser()
        if not p.is_dir():
            raise UsageError(f"${ENV_VAR} points to {p}, which is not a directory")
        return p
    repo = Path(__file__).resolve().parents[3]  # <repo>/src/reasonlab/tasks/gsm8k.py
    candidates = [repo.parent / "shared" / "data" / "gsm8k", Path.cwd() / "shared" / "data" / "gsm8k"]
    for p in candidates:
        if (p / "test.jsonl").is_file() or (p / "train.jsonl").is_file():
            return p
    raise UsageError(
        f"GSM8K data not found (looked in {', '.join(map(str, candidates))}): "
        f"set ${ENV_VAR} to a directory with train.jsonl/test.jsonl, or use gsm8k:<file.jsonl>"
    )


class GSM8KTask(JsonlTask):
    """GSM8K, or any JSONL in its format.

    ``path``: a JSONL file (serves every split) or a directory of ``<split>.jsonl``; ``None`` uses
    :func:`default_data_dir`. ``fewshot_path``: where worked examples come from (default: the
    ``train.jsonl`` next to the data, else the default data directory's).
    """

    name = "gsm8k"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        prompt_format: str = "chat",
        num_fewshot: int = 4,
        fewshot_path: str | os.PathLike | None = None,
        on_bad: Literal["error", "skip"] = "error",
        verifier: "MathVerifierConfig | None" = None,
    ):
        columns = Columns(question="question", answer="answer", answer_format="gsm8k")
        self._init(path, columns, prompt_format, num_fewshot, fewshot_path, on_bad, verifier)

    def data_path(self) -> Path:
        return self.path if self.path is not None else default_data_dir()

    def _fewshot_records(self):
        found = super()._fewshot_records()
        if found is None and self.fewshot_path is None and self.path is not None:
            # A lone GSM8K-format file: borrow worked examples from GSM8K's own train split.
            try:
                train = default_data_dir() / "train.jsonl"
            except UsageError:
                return None  # the caller says why few-shot prompts cannot be built
            found = self._read(train) if train.is_file() else None
        return found
