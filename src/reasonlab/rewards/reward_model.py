"""Trained reward models: a causal-LM backbone with a scalar head, as an ORM or a PRM.

The model is any Hugging Face causal LM (``tiny``, ``smollm2``, a local checkpoint) whose last hidden
state feeds one linear unit, ``nn.Linear(hidden, 1)``: a shared-backbone value head, as in PPO. The
head reads a logit at chosen token positions and ``sigmoid`` turns it into a probability:

- **ORM** (outcome reward model, Cobbe et al. 2021): one logit at the last token of the solution,
  the probability that the solution is correct.
- **PRM** (process reward model, Lightman et al. 2023; Math-Shepherd, Wang et al. 2024): the
  solution is laid out as ``step_1 SEP step_2 SEP ... step_n SEP`` and the head reads a logit at the
  last token of every separator, the probability that the solution is still correct after that step.
  The separator is written after the last step too, so every step is read at the same kind of token.

Prompts are tokenized as the transformers policy does (raw text with the tokenizer's special tokens,
chat messages through the chat template), then each piece (completion, or each step and separator)
separately, so the read positions are exact whatever the tokenizer merges. An input longer than
``max_length`` loses its beginning; a step whose read position was cut off gets NaN ("could not
rate"), never a made-up number.

A trained model is a directory::

    backbone/                the causal LM (save_pretrained) and its tokenizer
    value_head.safetensors   the head: weight (1, hidden), bias (1,)
    reward_model.json        the card: kind, separator, base model, max_length, training info

:func:`load_reward_model` opens any kind (``orm``, ``prm``, and ``implicit-prm`` from
``rewards/implicit_prm.py``). Trained models plug in everywhere a reward is used:

- search: ``search.scorers.as_scorer`` (ORM: ``OutcomeScorer``; PRM: ``ProcessScorer``, a batched
  ``PRMScorer``); a PRM also satisfies the ``ProcessRewardModel`` protocol itself, so
  ``PRMScorer(prm, "min")`` works too;
- RL: :class:`RewardModelReward`, a TRL-shaped reward function ``f(prompts, completions, **columns)``,
  and per step ``rewards.process.PRMStepReward`` (``--process-rewards prm:DIR``).

Train them with ``reasonlab train orm`` / ``reasonlab train prm`` (``learn/orm.py``, ``learn/prm.py``).
Nothing here imports the search layer (it comes after rewards); the step helpers both use are in
``rewards/steps.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from reasonlab.errors import UsageError
from reasonlab.rewards.steps import AGGREGATIONS, aggregate_or_nan, split_steps
from reasonlab.types import Example, Prompt

CARD = "reward_model.json"
HEAD = "value_head.safetensors"
BACKBONE = "backbone"
KINDS = ("orm", "prm", "implicit-prm")


# ----------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------

def auroc(scores: Sequence[float], labels: Sequence[bool | int]) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2.

    Computed from ranks (the Mann-Whitney U statistic), with tied scores sharing their mean rank.
    NaN scores are left out. Returns NaN when either class is empty (AUROC is undefined then).
    """
    pairs = [(float(s), bool(y)) for s, y in zip(scores, labels) if not math.isnan(float(s))]
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return math.nan
    pairs.sort(key=lambda p: p[0])
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mean_rank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum += mean_rank * sum(1 for _, y in pairs[i:j + 1] if y)
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def unescape(text: str) -> str:
    r"""Turn the escapes a command line can type (``\n``, ``\t``, ``\\``) into the characters."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in text else text


# ----------------------------------------------------------------------------------------------
# Tokenization: where the head reads
# ----------------------------------------------------------------------------------------------

class Encoded(NamedTuple):
    """One reward-model input: token ids, the positions the head reads, and where the completion starts."""

    ids: list[int]
    positions: list[int]
    """Read positions, one per step (PRM) or one (ORM); negative when truncation cut them off."""
    start: int
    """Index of the first completion token (after any truncation; may be negative if it was cut)."""


def prompt_token_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt as the transformers policy feeds it (``HFPolicy.encode``)."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("chat-message prompts need a tokenizer with a chat template; use a plain-text prompt")
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _truncate(ids: list[int], positions: list[int], start: int, max_length: int) -> Encoded:
    """Keep the last ``max_length`` tokens (the solution's end matters most); shift positions."""
    cut = max(0, len(ids) - max_length) if max_length > 0 else 0
    return Encoded(ids[cut:], [p - cut for p in positions], start - cut)


def encode_outcome(tokenizer: Any, prompt: Prompt, completion: str, max_length: int = 0) -> Encoded:
    """ORM input: prompt + completion, read at the completion's last token (the prompt's last if empty)."""
    ids = prompt_token_ids(tokenizer, prompt)
    start = len(ids)
    ids = ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
    return _truncate(ids, [len(ids) - 1], start, max_length)


def encode_steps(tokenizer: Any, prompt: Prompt, steps: Sequence[str], separator: str,
                 max_length: int = 0) -> Encoded:
    """PRM input: prompt + ``step_1 SEP ... step_n SEP``, read at the last token of each SEP."""
    if not separator:
        raise UsageError("a process reward model needs a non-empty step separator")
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if not sep:
        raise UsageError(f"the step separator {separator!r} tokenizes to nothing")
    ids = prompt_token_ids(tokenizer, prompt)
    start = len(ids)
    positions = []
    for s in steps:
        ids = ids + tokenizer(s, add_special_tokens=False)["input_ids"] + sep
        positions.append(len(ids) - 1)
    return _truncate(ids, positions, start, max_length)


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: ``input_ids``, ``attention_mask`` (B, T) long tensors."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, :len(ids)] = 1
    return input_ids, mask


def split_solution(text: str, separator: str) -> list[str]:
    """A solution's steps (empty ones dropped); a text with no step is one (possibly empty) step."""
    return list(split_steps(text, separator)) or [text]


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The part of a causal LM that returns hidden states (unwrapping a peft model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def hidden_size(model: torch.nn.Module) -> int:
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.hidden_size)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RewardModelCard:
    """What a saved reward model is: written to ``reward_model.json`` beside the weights."""

    kind: str
    """orm, prm or implicit-prm."""
    separator: str = ""
    """Step separator (PRM: where the head reads; implicit PRM: where steps end)."""
    base_model: str = ""
    """The model the backbone was initialised from."""
    max_length: int = 0
    """Longest input in tokens (0: the backbone's position limit)."""
    beta: float = 0.0
    """Implicit PRM: the reward scale of the log-ratio."""
    reference: str = ""
    """Implicit PRM: the reference model (a built-in name or a checkpoint directory)."""
    info: dict = field(default_factory=dict)
    """Free-form training record (run directory, labels used, steps, held-out AUROC, ...)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown reward model kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind in ("prm", "implicit-prm") and not self.separator:
            raise UsageError(f"a {self.kind} needs a step separator")

    def save(self, path: str | Path) -> None:
        Path(path, CARD).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> RewardModelCard:
        f = Path(path, CARD)
        if not f.is_file():
            raise UsageError(f"{path} is not a reasonlab reward model (no {CARD})")
        try:
            d = json.loads(f.read_text())
            return cls(**d)
        except (json.JSONDecodeError, TypeError) as e:
            raise UsageError(f"{f} is not a valid reward model card: {e}") from e


class RewardModel(torch.nn.Module):
    """A causal LM backbone with a scalar head, scoring outcomes (ORM) or steps (PRM)."""

    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, card: RewardModelCard, batch_size: int = 16):
        super().__init__()
        if card.kind not in ("orm", "prm"):
            raise UsageError(f"RewardModel is an orm or prm, not {card.kind!r} (see rewards/implicit_prm.py)")
        self.backbone, self.tokenizer, self.card = backbone, tokenizer, card
        self.batch_size = batch_size
        self.head = torch.nn.Linear(hidden_size(backbone), 1)
        # A zero head starts every prediction at p = 0.5 (loss ln 2): training moves it from there,
        # and the backbone's features are not disturbed by a random readout in the first steps.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.head.to(next(backbone.parameters()).device)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @property
    def kind(self) -> str:
        return self.card.kind

    @property
    def separator(self) -> str:
        return self.card.separator

    @property
    def max_length(self) -> int:
        if self.card.max_length:
            return self.card.max_length
        return int(getattr(self.backbone.config, "max_position_embeddings", 0) or 0)

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head logits at every position: ``input_ids (B, T) -> (B, T)`` (float32)."""
        h = decoder_of(self.backbone)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.head(h.last_hidden_state.float()).squeeze(-1)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, prompt: Prompt, completion: str | None = None, steps: Sequence[str] | None = None) -> Encoded:
        """The input for one outcome (ORM) or one list of steps (PRM)."""
        if self.kind == "orm":
            if completion is None:
                raise UsageError("an ORM scores a whole completion, not steps")
            return encode_outcome(self.tokenizer, prompt, completion, self.max_length)
        if steps is None:
            raise UsageError("a PRM scores steps: pass steps=[...]")
        return encode_steps(self.tokenizer, prompt, steps, self.separator, self.max_length)

    @torch.inference_mode()
    def probabilities(self, encoded: Sequence[Encoded]) -> list[list[float]]:
        """sigmoid(head logit) at each read position of each input; NaN where truncation cut it off.

        Identical token sequences run once: best-of-N and search score many copies of the same short
        solution (32 samples of a one-line answer hold a handful of distinct texts)."""
        was_training = self.training
        self.eval()
        keys = [tuple(e.ids) for e in encoded]
        first: dict[tuple[int, ...], int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        uniq = sorted(first.values(), key=lambda i: len(encoded[i].ids))  # little padding per batch
        rows: dict[int, torch.Tensor] = {}
        for s in range(0, len(uniq), self.batch_size):
            idx = uniq[s:s + self.batch_size]
            ids, mask = pad_batch([encoded[i].ids for i in idx], self.pad_id)
            probs = self(ids.to(self.device), mask.to(self.device)).sigmoid().cpu()
            for row, i in enumerate(idx):
                rows[i] = probs[row]
        self.train(was_training)
        out: list[list[float]] = []
        for e, key in zip(encoded, keys):
            probs = rows[first[key]]
            out.append([float(probs[p]) if p >= 0 else math.nan for p in e.positions])
        return out

    # -- scoring API --------------------------------------------------------------------------
    def score_outcomes(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """ORM: P(correct) of each completion of its prompt."""
        if self.kind != "orm":
            raise UsageError("score_outcomes needs an ORM; a PRM scores steps (score_steps / score_texts)")
        return [p[0] for p in self.probabilities([self.encode(pr, c) for pr, c in zip(prompts, completions)])]

    def score_steps(self, prompts: Sequence[Prompt], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """PRM: P(still correct) after each step, for each list of steps."""
        if self.kind != "prm":
            raise UsageError("score_steps needs a PRM; an ORM scores whole completions (score_outcomes)")
        return self.probabilities([self.encode(pr, steps=list(s)) for pr, s in zip(prompts, steps)])

    def step_scores(self, example: Example, steps: Sequence[str]) -> list[float]:
        """The search layer's ``ProcessRewardModel`` protocol (PRM only)."""
        return self.score_steps([example.prompt], [list(steps)])[0]

    def score_texts(self, prompts: Sequence[Prompt], completions: Sequence[str], how: str = "min") -> list[float]:
        """One score per completion: the ORM's, or the PRM's step scores (split at the separator) aggregated."""
        if self.kind == "orm":
            return self.score_outcomes(prompts, completions)
        per_step = self.score_steps(prompts, [split_solution(c, self.separator) for c in completions])
        return [aggregate_or_nan(s, how) for s in per_step]

    # -- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path, backbone: torch.nn.Module | None = None) -> Path:
        """Write the model directory (``backbone``: e.g. a LoRA model merged for saving)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (backbone or self.backbone).save_pretrained(str(path / BACKBONE))
        self.tokenizer.save_pretrained(str(path / BACKBONE))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / HEAD))
        self.card.save(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int = 16) -> RewardModel:
        from safetensors.torch import load_file

        card = RewardModelCard.read(path)
        backbone, tokenizer = load_backbone(Path(path) / BACKBONE, device, dtype)
        rm = cls(backbone, tokenizer, card, batch_size=batch_size)
        try:
            rm.head.load_state_dict(load_file(str(Path(path) / HEAD)))
        except (OSError, RuntimeError) as e:
            raise UsageError(f"cannot load the value head of {path}: {str(e).splitlines()[0]}") from e
        return rm.eval()


def load_backbone(path: str | Path, device: str = "auto", dtype: str = "auto"):
    """A causal LM and its tokenizer from a checkpoint directory or a built-in model name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonlab.policies.hf import pick_device, pick_dtype

    path = str(path)
    if not Path(path).is_dir():
        from reasonlab.policies.models import resolve_model

        path = resolve_model(path).hf_checkpoint()
    dev = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load a causal LM from {path!r}: {str(e).splitlines()[0]}") from e
    return model.to(dev).eval(), tokenizer


def load_reward_model(path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int = 16):
    """Open a saved reward model of any kind: :class:`RewardModel` (orm, prm) or ``ImplicitPRM``."""
    card = RewardModelCard.read(path)
    if card.kind == "implicit-prm":
        from reasonlab.rewards.implicit_prm import ImplicitPRM

        return ImplicitPRM.load(path, device=device, dtype=dtype, batch_size=batch_size)
    return RewardModel.load(path, device=device, dtype=dtype, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# Adapter: a TRL-shaped reward (the search scorers are in search/scorers.py: as_scorer)
# ----------------------------------------------------------------------------------------------

class RewardModelReward:
    """A trained reward model as a TRL-shaped reward: ``f(prompts, completions, **columns) -> list[float | None]``.

    ORM: P(correct). PRM: step scores aggregated with ``how``. A completion the model could not rate
    (its read position cut off by ``max_length``) gets ``None``, never a guessed number.
    """

    def __init__(self, model: Any, how: str = "min"):
        if how not in AGGREGATIONS:
            raise UsageError(f"unknown step-score aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.model, self.how = model, how
        self.__name__ = model.kind if model.kind == "orm" else f"{model.kind}-{how}"

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Any) -> list[float | None]:
        scores = self.model.score_texts(list(prompts), list(completions), self.how)
        return [None if math.isnan(s) else float(s) for s in scores]
