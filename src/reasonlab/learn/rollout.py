"""Rollouts for online RL: sample, score, and turn samples into padded micro-batches.

Shared by the policy-gradient trainers (``grpo.py`` for GRPO/RLOO/REINFORCE, ``ppo.py``). The trainer
learns on exactly the token ids the sampler produced (never re-tokenized text), and compares its own
log-probabilities with the sampler's (``Sample.sampler_logp``).

Batch layout: each row is ``[left-padded prompt | right-padded completion]``, so every completion
starts in the same column and the model only needs logits for the last ``T + 1`` positions
(``logits_to_keep``): a vocabulary-sized projection of the prompt positions would be wasted work.
Rows are grouped into micro-batches of similar length, which keeps padding small; the loss weights
are computed for the whole optimizer batch (``losses.token_weights``), so the micro-batch split does
not change the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class Sample:
    """One sampled completion of one prompt, as a trainer sees it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logp: list[float] | None
    truncated: bool
    """The completion hit max_new_tokens (finish reason ``length``)."""
    group: int
    """Index of its prompt's group in the batch (completions of one prompt share it)."""
    example: Any = None
    text: str = ""
    reward: float = 0.0
    advantage: float = 0.0
    loss_weight_scale: float = 1.0
    """0 excludes the sample from the loss (e.g. overlong filtering), 1 keeps it."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MicroBatch:
    """Padded tensors of a few samples. ``T`` is the longest completion among them."""

    index: list[int]            # positions of these samples in the optimizer batch
    input_ids: torch.Tensor     # (b, P + T)
    attention_mask: torch.Tensor  # (b, P + T)
    position_ids: torch.Tensor  # (b, P + T)
    completion_ids: torch.Tensor  # (b, T)
    mask: torch.Tensor          # (b, T) float, 1 on completion tokens

    def to(self, device: torch.device) -> "MicroBatch":
        return MicroBatch(self.index, *(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                                self.position_ids, self.completion_ids, self.mask)))


def make_microbatches(samples: Sequence[Sample], rows: int, pad_id: int,
                      include: Sequence[int] | None = None) -> list[MicroBatch]:
    """Split ``samples`` (those at positions ``include``, default all) into micro-batches of at most
    ``rows`` samples of similar total length. ``MicroBatch.index`` holds positions in ``samples``."""
    pick = range(len(samples)) if include is None else include
    order = sorted(pick, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
    out = []
    for s in range(0, len(order), rows):
        idx = order[s:s + rows]
        p = max(len(samples[i].prompt_ids) for i in idx)
        t = max(max(len(samples[i].completion_ids) for i in idx), 1)
        b = len(idx)
        ids = torch.full((b, p + t), pad_id, dtype=torch.long)
        att = torch.zeros((b, p + t), dtype=torch.long)
        comp = torch.full((b, t), pad_id, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.float32)
        for r, i in enumerate(idx):
            pi, ci = samples[i].prompt_ids, samples[i].completion_ids
            ids[r, p - len(pi):p] = torch.tensor(pi, dtype=torch.long)
            att[r, p - len(pi):p + len(ci)] = 1
            if ci:
                ids[r, p:p + len(ci)] = torch.tensor(ci, dtype=torch.long)
                comp[r, :len(ci)] = torch.tensor(ci, dtype=torch.long)
                mask[r, :len(ci)] = 1.0
        # Positions count real tokens only, as the sampler's left-padded prefill does.
        pos = (att.cumsum(1) - 1).clamp(min=0)
        out.append(MicroBatch(idx, ids, att, pos, comp, mask))
    return out


def completion_logits(model, mb: MicroBatch) -> torch.Tensor:
    """Logits that predict each completion token. Returns ``(b, T, V)`` (float32)."""
    t = mb.completion_ids.shape[1]
    # Logits at positions P-1 .. P+T-2 predict completion tokens 0 .. T-1: keep the last T+1, drop one.
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                logits_to_keep=t + 1, use_cache=False)
    return out.logits[:, :-1].float()


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log p(ids)`` under ``softmax(logits)``. ``logits: (b, T, V)``, ``ids: (b, T)`` -> ``(b, T)``."""
    # logsumexp + gather avoids materialising a second (b, T, V) log-softmax tensor.
    return logits.gather(-1, ids[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def repetition_rate(ids: Sequence[int], n: int = 4) -> float:
    """Fraction of the n-grams of ``ids`` that already occurred earlier in it (0 for short sequences)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
