"""Implicit process rewards: a PRM for free from a model trained only on outcome labels.

PRIME (Cui et al. 2025, "Process Reinforcement through Implicit Rewards"), after Yuan et al. 2024
("Free Process Rewards without Process Labels"): parametrise the outcome reward of a causal LM
``pi_phi`` against a frozen reference ``pi_ref`` as

    r_phi(y) = beta * log( pi_phi(y) / pi_ref(y) ) = sum_t beta * log( pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t) )

and train ``pi_phi`` like an ORM, with binary cross-entropy of ``sigmoid(r_phi(y))`` against the
verifier's outcome label (``reasonlab train orm --objective implicit``). The per-token terms

    r_t = beta * ( log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t) )                 (PRIME, eq. 3)

are then dense process rewards, although no step was ever labelled. A step's reward is the sum of
its tokens' ``r_t`` (``mode="step"``, PRIME's choice). ``mode="value"`` gives instead
``sigmoid(sum of r_t up to the step's end)``: the implicit Q-value of the prefix (Yuan et al.),
which is a probability, as weighted votes need.

The solution is laid out as the model saw it in training: ``step_1 SEP step_2 SEP ... step_n``
tokenized as one text (no trailing separator); a token belongs to the step whose text (with the
separator after it) contains the token's first character.

Saved as a reward-model directory (``rewards/reward_model.py``) of kind ``implicit-prm``: the trained
LM in ``backbone/``, and the card naming ``beta`` and the reference model, which is loaded from
that name (a built-in model or a checkpoint directory) when the PRM is opened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reasonlab.errors import UsageError
from reasonlab.rewards.reward_model import (
    BACKBONE,
    Encoded,
    RewardModelCard,
    load_backbone,
    pad_batch,
    prompt_token_ids,
    split_solution,
)
from reasonlab.rewards.steps import aggregate_or_nan
from reasonlab.types import Example, Prompt

MODES = ("step", "value")


# ----------------------------------------------------------------------------------------------
# Pure functions on tensors
# ----------------------------------------------------------------------------------------------

def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``logp[:, t] = log p(input_ids[:, t] | input_ids[:, <t])`` under ``model``: ``(B, T)``, 0 at t = 0.

    The log-softmax is taken one row at a time, so a large vocabulary costs ``T x V`` floats, not ``B x T x V``.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    rows = []
    for b in range(logits.shape[0]):
        lp = logits[b, :-1].float().log_softmax(-1)
        rows.append(lp.gather(-1, input_ids[b, 1:, None]).squeeze(-1))
    out = torch.stack(rows)
    return torch.cat([out.new_zeros((out.shape[0], 1)), out], dim=1)


def implicit_token_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """PRIME eq. 3: ``r_t = beta * (logp_t - ref_logp_t)``. Shapes ``(B, T)`` -> ``(B, T)``."""
    return beta * (logp - ref_logp)


def implicit_outcome_logit(token_rewards: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """The outcome reward ``r_phi(y) = sum_t r_t`` over completion tokens: ``(B, T), (B, T) -> (B,)``.

    Trained as a logit: ``BCE(sigmoid(r_phi(y)), label)`` is PRIME's cross-entropy loss.
    """
    return (token_rewards * completion_mask).sum(-1)


def step_sums(rewards: Sequence[float], step_of_token: Sequence[int], n_steps: int) -> list[float]:
    """Sum of token rewards per step (``step_of_token[i]`` is token i's step)."""
    out = [0.0] * n_steps
    for r, s in zip(rewards, step_of_token):
        out[s] += r
    return out


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class ImplicitPRM:
    """Process rewards from the log-ratio of a model trained as an implicit ORM against its reference."""

    kind = "implicit-prm"

    def __init__(self, model: torch.nn.Module, ref_model: torch.nn.Module, tokenizer: Any, card: RewardModelCard,
                 mode: str = "step", batch_size: int = 16):
        if card.kind != "implicit-prm":
            raise UsageError(f"ImplicitPRM needs a card of kind implicit-prm, got {card.kind!r}")
        if mode not in MODES:
            raise UsageError(f"implicit PRM mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise UsageError("the implicit PRM needs a fast tokenizer (it maps tokens to steps by character offsets)")
        self.model, self.ref_model, self.tokenizer, self.card = model.eval(), ref_model.eval(), tokenizer, card
        self.mode, self.batch_size = mode, batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @property
    def separator(self) -> str:
        return self.card.separator

    @property
    def beta(self) -> float:
        return self.card.beta

    @property
    def max_length(self) -> int:
        return self.card.max_length or int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, prompt: Prompt, steps: Sequence[str]) -> tuple[Encoded, list[int]]:
        """Token ids of prompt + ``SEP.join(steps)``, and the step index of each completion token.

        ``Encoded.positions`` holds the last token index of each step (-1 for a step with no token).
        """
        text = self.separator.join(steps)
        ends, at = [], 0
        for i, s in enumerate(steps):  # a step owns its text and the separator after it
            at += len(s) + (len(self.separator) if i < len(steps) - 1 else 0)
            ends.append(at)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        step_of = []
        for a, _ in enc["offset_mapping"]:
            step_of.append(next((i for i, e in enumerate(ends) if a < e), len(steps) - 1))
        p = prompt_token_ids(self.tokenizer, prompt)
        ids = p + enc["input_ids"]
        last = [-1] * len(steps)
        for j, s in enumerate(step_of):
            last[s] = len(p) + j
        cut = max(0, len(ids) - self.max_length) if self.max_length else 0
        return Encoded(ids[cut:], [x - cut if x >= 0 else -1 for x in last], len(p) - cut), step_of

    @torch.inference_mode()
    def token_rewards(self, encoded: Sequence[Encoded]) -> list[list[float] | None]:
        """``r_t`` of each completion token of each input; None where truncation cut completion tokens."""
        dev = next(self.model.parameters()).device
        out: list[list[float] | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            ids, mask = pad_batch([encoded[i].ids for i in idx], self.pad_id)
            ids, mask = ids.to(dev), mask.to(dev)
            r = implicit_token_rewards(token_logprobs(self.model, ids, mask), token_logprobs(self.ref_model, ids, mask),
                                       self.beta).cpu()
            for row, i in enumerate(idx):
                e = encoded[i]
                if e.start >= 1:  # the first completion token needs a context token before it
                    out[i] = r[row, e.start:len(e.ids)].tolist()
        return out

    # -- scoring API --------------------------------------------------------------------------
    def score_steps(self, prompts: Sequence[Prompt], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per step: the sum of its token rewards (mode step) or sigmoid of the running sum (mode value)."""
        encs = [self.encode(p, list(s)) for p, s in zip(prompts, steps)]
        rewards = self.token_rewards([e for e, _ in encs])
        out = []
        for (e, step_of), r, s in zip(encs, rewards, steps):
            if r is None:
                out.append([math.nan] * len(s))
                continue
            sums = step_sums(r, step_of, len(s))
            if self.mode == "value":
                run, vals = 0.0, []
                for x in sums:
                    run += x
                    vals.append(1.0 / (1.0 + math.exp(-run)))
                sums = vals
            out.append(sums)
        return out

    def step_scores(self, example: Example, steps: Sequence[str]) -> list[float]:
        """The search layer's ``ProcessRewardModel`` protocol."""
        return self.score_steps([example.prompt], [list(steps)])[0]

    def outcome_scores(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """``sigmoid(r_phi(y))``: the implicit ORM's P(correct), the quantity it was trained on."""
        rewards = self.token_rewards([self.encode(p, [c])[0] for p, c in zip(prompts, completions)])
        return [math.nan if r is None else 1.0 / (1.0 + math.exp(-sum(r))) for r in rewards]

    def score_texts(self, prompts: Sequence[Prompt], completions: Sequence[str], how: str = "min") -> list[float]:
        """Step scores of each completion (split at the separator), aggregated with ``how``."""
        per_step = self.score_steps(prompts, [split_solution(c, self.separator) for c in completions])
        return [aggregate_or_nan(s, how) for s in per_step]

    # -- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path, model: torch.nn.Module | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (model or self.model).save_pretrained(str(path / BACKBONE))
        self.tokenizer.save_pretrained(str(path / BACKBONE))
        self.card.save(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
             mode: str = "step") -> ImplicitPRM:
        card = RewardModelCard.read(path)
        if not card.reference:
            raise UsageError(f"{path}: the implicit PRM's card names no reference model")
        model, tokenizer = load_backbone(Path(path) / BACKBONE, device, dtype)
        ref, _ = load_backbone(card.reference, device, dtype)
        for p in ref.parameters():
            p.requires_grad_(False)
        return cls(model, ref, tokenizer, card, mode=mode, batch_size=batch_size)
