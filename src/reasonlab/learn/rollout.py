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

Shared prompts (``make_group_microbatches`` + ``shared_prompt_logits``): GRPO samples G completions
of each prompt, and the flat layout runs that prompt through the model G times. With few-shot
prompts and short answers (smollm2 on arithmetic: ~120 prompt and ~9 completion tokens) that is
~93% of the training compute. The shared layout runs each distinct prompt once, with gradients,
keeps its keys/values, gathers them to one row per completion (an index gather, so gradients from
every completion flow back into the one prompt pass), and runs only the completion tokens on top.
It computes the same log-probabilities and gradients as the flat layout, up to float rounding.

Twins (``merge_twins``): a confident policy samples the same completion of a prompt several times, and
identical rows give identical per-token losses, so each distinct one is trained once with the twins' loss
weights summed: the same update for less work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from reasonlab.errors import UsageError


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


def merge_twins(samples: Sequence[Sample], include: Sequence[int], per_token: torch.Tensor,
                weights: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Train once on each distinct sample: twins (the same prompt and completion ids, loss weight scale and
    ``per_token`` row) are merged into the first of them, whose loss weights become the twins' sum.

    A policy-gradient loss is a weighted sum of per-token terms that depend only on the sequence, its
    advantages and its log-probabilities under the current, old and reference weights, which are the same
    for twins. So ``sum(w_a * l) + sum(w_b * l) = sum((w_a + w_b) * l)``: one forward and backward of the
    merged row gives the same update as both, up to float rounding. A confident policy samples many twins
    (tiny on arith: about half of the rows of groups with mixed rewards, more as training sharpens it).

    ``include``: positions in ``samples`` to be trained on. ``per_token, weights: (B, T)``: what the loss reads
    per token besides the sequence (GRPO's token advantages; PPO's token rewards, from which its advantages
    follow), and the loss weights.
    Returns the positions to train on (the first of each set of twins, in ``include``'s order), the new
    ``weights: (B, T)``, and ``counts: (B,)``, how many trained samples each position now stands for (0 for
    merged-away twins and positions outside ``include``), for metrics that average over samples.
    """
    weights = weights.clone()
    counts = torch.zeros(len(samples))
    first: dict[tuple, int] = {}
    kept = []
    for i in include:
        s = samples[i]
        n = len(s.completion_ids)
        key = (tuple(s.prompt_ids), tuple(s.completion_ids), s.loss_weight_scale,
               per_token[i, :n].numpy().tobytes())
        j = first.setdefault(key, i)
        if j == i:
            kept.append(i)
        else:
            weights[j] += weights[i]
        counts[j] += 1
    return kept, weights, counts


@dataclass
class GroupMicroBatch:
    """Completions of a few prompts, each distinct prompt stored once. ``T`` is the longest completion.

    Exposes ``index``, ``completion_ids`` and ``mask`` like :class:`MicroBatch`, so a trainer's loop
    treats both alike; :func:`completion_logits` accepts either.
    """

    index: list[int]              # positions of these samples (completion rows) in the optimizer batch
    prompt_ids: torch.Tensor      # (U, P) distinct prompts, left-padded
    prompt_mask: torch.Tensor     # (U, P) 1 on prompt tokens
    owner: torch.Tensor           # (b,) long: the prompt row of each completion row
    completion_ids: torch.Tensor  # (b, T) right-padded
    mask: torch.Tensor            # (b, T) float, 1 on completion tokens

    def to(self, device: torch.device) -> "GroupMicroBatch":
        return GroupMicroBatch(self.index, *(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.owner,
                                                                     self.completion_ids, self.mask)))


def make_group_microbatches(samples: Sequence[Sample], rows: int, pad_id: int,
                            include: Sequence[int] | None = None) -> list[GroupMicroBatch]:
    """Split ``samples`` (those at positions ``include``, default all) into micro-batches of at most
    ``rows`` completions, keeping the completions of one prompt together so the prompt runs once.

    Samples are grouped by their exact ``prompt_ids`` (not by ``Sample.group``: two groups of the same
    prompt share it too). A group larger than ``rows`` is split into chunks, each of which runs the
    prompt once; chunks are packed whole, shortest prompts first, so prompt padding stays small.
    Groups may hold different numbers of completions (e.g. after zero-advantage samples are skipped).
    """
    pick = range(len(samples)) if include is None else include
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in pick:
        groups.setdefault(tuple(samples[i].prompt_ids), []).append(i)
    chunks = [members[s:s + rows] for members in groups.values() for s in range(0, len(members), rows)]
    chunks.sort(key=lambda c: (len(samples[c[0]].prompt_ids), max(len(samples[i].completion_ids) for i in c)))
    packed: list[list[list[int]]] = []
    for c in chunks:
        if packed and sum(len(x) for x in packed[-1]) + len(c) <= rows:
            packed[-1].append(c)
        else:
            packed.append([c])
    out = []
    for mb_chunks in packed:
        u = len(mb_chunks)
        idx = [i for c in mb_chunks for i in c]
        p = max(len(samples[c[0]].prompt_ids) for c in mb_chunks)
        t = max(max(len(samples[i].completion_ids) for i in idx), 1)
        pids = torch.full((u, p), pad_id, dtype=torch.long)
        pmask = torch.zeros((u, p), dtype=torch.long)
        for r, c in enumerate(mb_chunks):
            pi = samples[c[0]].prompt_ids
            pids[r, p - len(pi):] = torch.tensor(pi, dtype=torch.long)
            pmask[r, p - len(pi):] = 1
        owner = torch.tensor([r for r, c in enumerate(mb_chunks) for _ in c], dtype=torch.long)
        comp = torch.full((len(idx), t), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.float32)
        for r, i in enumerate(idx):
            ci = samples[i].completion_ids
            if ci:
                comp[r, :len(ci)] = torch.tensor(ci, dtype=torch.long)
                mask[r, :len(ci)] = 1.0
        out.append(GroupMicroBatch(idx, pids, pmask, owner, comp, mask))
    return out


def supports_shared_prompt(model) -> bool:
    """Whether :func:`shared_prompt_logits` can run ``model``: it needs a plain growing KV cache in
    every layer, and no gradient checkpointing (transformers drops the cache under checkpointing)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    # transformers 5 renamed the flag (the old name warns); peft models forward both to the base model.
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        return False
    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def shared_prompt_logits(model, gmb: GroupMicroBatch) -> torch.Tensor:
    """Logits that predict each completion token, running each distinct prompt once. ``(b, T, V)`` float32.

    1. The ``U`` prompts run left-padded with a KV cache (and gradients); the last position's logits
       predict completion token 0.
    2. The cache is gathered to one row per completion (``owner``): indexing is differentiable, so
       each completion's gradient reaches the shared prompt pass, summed over the group.
    3. Completion tokens ``0 .. T-2`` run on top (the last token predicts nothing we score), with
       positions continuing from each prompt's length and the prompt's padding still masked.
    """
    from transformers.cache_utils import DynamicCache

    if not supports_shared_prompt(model):
        raise UsageError("shared_prompt_logits needs plain KV caches and no gradient checkpointing; "
                         "use make_microbatches + completion_logits for this model")
    t = gmb.completion_ids.shape[1]
    cache = DynamicCache(config=model.config)
    pos = (gmb.prompt_mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=gmb.prompt_ids, attention_mask=gmb.prompt_mask, position_ids=pos,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().index_select(0, gmb.owner)[:, None]   # (b, 1, V)
    if t == 1:
        return first
    cache.batch_select_indices(gmb.owner)
    comp_in = gmb.completion_ids[:, :t - 1]
    att = torch.cat([gmb.prompt_mask.index_select(0, gmb.owner), (gmb.mask[:, :t - 1] > 0).long()], dim=1)
    start = gmb.prompt_mask.sum(1).index_select(0, gmb.owner)            # = the next position of each prompt
    cpos = start[:, None] + torch.arange(t - 1, device=start.device)[None]
    rest = model(input_ids=comp_in, attention_mask=att, position_ids=cpos, past_key_values=cache,
                 use_cache=True).logits.float()                           # (b, T-1, V)
    return torch.cat([first, rest], dim=1)


def completion_logits(model, mb: MicroBatch | GroupMicroBatch) -> torch.Tensor:
    """Logits that predict each completion token. Returns ``(b, T, V)`` (float32).

    A :class:`GroupMicroBatch` goes through :func:`shared_prompt_logits` (same numbers, prompts run once).
    """
    if isinstance(mb, GroupMicroBatch):
        return shared_prompt_logits(model, mb)
    t = mb.completion_ids.shape[1]
    # Logits at positions P-1 .. P+T-2 predict completion tokens 0 .. T-1: keep the last T+1, drop one.
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                logits_to_keep=t + 1, use_cache=False)
    return out.logits[:, :-1].float()


def token_logps(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p(ids)`` under ``softmax(logits / temperature)``. ``logits: (b, T, V)``, ``ids: (b, T)`` -> ``(b, T)``."""
    if temperature != 1.0:
        logits = logits / temperature
    # logsumexp + gather avoids materialising a second (b, T, V) log-softmax tensor.
    return logits.gather(-1, ids[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sample_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """Completion lengths (tokens), truncation rate and repetition rate (of token 4-grams) of a batch of samples."""
    from reasonlab.rewards.combinators import repetition_rate

    lens = [len(s.completion_ids) for s in samples]
    return {"completion_len_mean": sum(lens) / len(lens), "completion_len_max": max(lens),
            "completion_len_min": min(lens), "truncation_rate": sum(s.truncated for s in samples) / len(samples),
            "repetition_rate": sum(repetition_rate(s.completion_ids, 4) for s in samples) / len(samples)}


def char_ends_to_tokens(decode, ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """For each character offset in ``char_ends``, the index of the completion token that writes it.

    ``decode(ids[:k])`` is the text of the first ``k`` tokens (the sampler's text is a prefix of the
    decoded ids: EOS and a cut stop string only come after it). A step ending at character ``e``
    (exclusive) ends at the first token ``k`` whose prefix text reaches ``e`` characters; found by
    bisection, so ``O(steps * log T)`` decodes, never a re-tokenisation of the text.
    """
    out = []
    n = len(ids)
    for e in char_ends:
        lo, hi = 1, n  # smallest k in [1, n] with len(decode(ids[:k])) >= e
        while lo < hi:
            mid = (lo + hi) // 2
            if len(decode(ids[:mid])) >= e:
                hi = mid
            else:
                lo = mid + 1
        out.append(max(min(lo, n) - 1, 0))
    return out
