"""The plain objects that flow between layers: Example -> Completion -> RewardResult.

Data moves one way through these objects (DESIGN.md, "The flow of data"). They are deliberately
dumb: dataclasses with no behaviour beyond (de)serialisation, so that every layer can be tested with
hand-made instances.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Union

#: A chat message as the OpenAI / Hugging Face chat-template convention has it.
Message = dict[str, str]
#: What a policy is asked to continue: raw text, or chat messages the policy renders with its
#: chat template.
Prompt = Union[str, list[Message]]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding (``top_p``/``top_k`` ignored)."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to at least top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per completion."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the stop string is not included in the returned text."""
    seed: int | None = None
    """Seed for the sampler's random generator; the same seed gives the same completions."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):  # a single string is a common slip
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


@dataclass
class Completion:
    """One sampled continuation of one prompt, token-in/token-out.

    ``token_ids`` are exactly the ids the sampler produced (trainers reuse them and never
    re-tokenize ``text``). ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the
    sampling distribution *before* temperature/top-p/top-k were applied, i.e. the model's own
    log-probability, which is what trainers compare against. It is ``None`` where a backend cannot
    report it.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    """``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (max_new_tokens hit)."""
    prompt_tokens: int
    prompt_index: int = 0
    """Index of the prompt in the ``generate`` call this completion answers."""
    prompt_token_ids: list[int] | None = None
    num_tokens: int | None = None
    """Generated-token count for backends that cannot return the ids themselves (some OpenAI-compatible
    servers); when ``token_ids`` is filled it is the count."""

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids) if self.token_ids else (self.num_tokens or 0)

    def to_dict(self, with_tokens: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if with_tokens:
            d["token_ids"] = self.token_ids
            d["logprobs"] = self.logprobs
        return d


@dataclass(frozen=True)
class Example:
    """One problem: how to prompt it, and what counts as correct.

    ``prompt`` is already formatted for the chosen prompt format (chat messages or raw text).
    ``answer`` is the gold final answer as text (``None`` for tasks judged only by tests or by a
    task-specific scorer); ``question`` keeps the unformatted problem for search and judges;
    ``meta`` holds whatever else the task's scorer needs (unit tests, reasoning-gym entries, ...).
    """

    id: str
    prompt: Prompt
    answer: str | None = None
    question: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "question": self.question}


class Status(str, enum.Enum):
    """What happened when a completion was scored. Only ``OK`` means the answer was right."""

    OK = "ok"
    WRONG = "wrong"
    UNPARSABLE = "unparsable"
    TIMEOUT = "timeout"
    ERROR = "error"

    def __str__(self) -> str:  # so f-strings and JSON show "ok", not "Status.OK"
        return self.value


@dataclass(frozen=True)
class RewardResult:
    """A score with its provenance.

    ``value`` is the reward (1.0/0.0 for verifiers, any float for reward models). For ``TIMEOUT``
    and ``ERROR`` it is ``None``: a failed check is never turned into a silent 0, and the caller
    decides what a failure is worth. ``extracted`` is the answer the scorer read from the
    completion, when it reads one.
    """

    value: float | None
    status: Status
    extracted: str | None = None
    details: str = ""

    @property
    def correct(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "status": self.status.value, "extracted": self.extracted, "details": self.details}

    @classmethod
    def ok(cls, extracted: str | None = None, details: str = "") -> "RewardResult":
        return cls(1.0, Status.OK, extracted, details)

    @classmethod
    def wrong(cls, extracted: str | None = None, details: str = "") -> "RewardResult":
        return cls(0.0, Status.WRONG, extracted, details)

    @classmethod
    def unparsable(cls, details: str = "") -> "RewardResult":
        return cls(0.0, Status.UNPARSABLE, None, details)

    @classmethod
    def timeout(cls, extracted: str | None = None, details: str = "") -> "RewardResult":
        return cls(None, Status.TIMEOUT, extracted, details)

    @classmethod
    def error(cls, details: str, extracted: str | None = None) -> "RewardResult":
        return cls(None, Status.ERROR, extracted, details)
