"""The policy interface: one ``generate`` for every backend, token-in/token-out.

``generate(prompts, sampling)`` returns a flat list of ``len(prompts) * sampling.n`` completions,
prompt-major: the samples of prompt ``i`` are ``out[i * n:(i + 1) * n]`` and carry
``prompt_index == i``. A prompt is raw text or chat messages; messages are rendered with the
model's chat template (``render``), raw text is used as it is.

Trainable backends (``TrainablePolicy``) also score given token ids, which trainers and scorers need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from reasonlab.types import Completion, Prompt, SamplingParams


class Policy(ABC):
    """A model that continues prompts."""

    #: Short name shown in tables and written to run directories.
    name: str = "policy"

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Completion]:
        """Sample ``sampling.n`` completions for each prompt (prompt-major, see module docstring)."""

    def render(self, prompt: Prompt) -> str:
        """The exact text the model is fed for ``prompt`` (chat template applied to messages)."""
        if isinstance(prompt, str):
            return prompt
        raise NotImplementedError(f"{type(self).__name__} cannot render chat messages")

    def close(self) -> None:
        """Release processes, servers or memory held by the backend."""

    def __enter__(self) -> "Policy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in ``text[start:]`` (as an index into ``text``), or -1."""
    best = -1
    for s in stops:
        if not s:
            continue
        i = text.find(s, start)
        if i != -1 and (best == -1 or i < best):
            best = i
    return best
