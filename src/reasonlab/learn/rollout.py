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

Prefix trees (``make_group_microbatches(..., tree=True)``): completions of one prompt that begin with the same
tokens compute those tokens' hidden states identically, since a token's keys, values and logits depend only on
the tokens before it. So each prompt's completions run as the nodes of their prefix tree, one per distinct
prefix, packed with the prompt into a few rows under a tree attention mask (each node sees its prompt and its
own ancestors), and each completion gathers its logits from the nodes on its path. A gather is differentiable, so a shared node's
gradient is the sum of its completions' terms: the same log-probabilities and gradients as one row per
completion, up to float rounding. A confident policy's completions share a lot: tiny's GRPO completions that
train run about 0.7 as many tokens this way.

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
    tree: "PrefixTrees | None" = None   # set: completion tokens run as each prompt's prefix tree

    def to(self, device: torch.device) -> "GroupMicroBatch":
        return GroupMicroBatch(self.index, *(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.owner,
                                                                     self.completion_ids, self.mask)),
                               tree=self.tree.to(device) if self.tree is not None else None)


@dataclass
class PrefixTrees:
    """A :class:`GroupMicroBatch`'s prompts and completions packed as prefix trees into a few token rows.

    A *segment* is one prompt (its tokens, no padding) followed by the nodes of its completions' prefix tree:
    one node per distinct (history, token), the last token of each completion left out (it predicts nothing
    that is scored), parents before children. Segments are packed whole into rows of about ``ROW_TOKENS``
    tokens; a token attends within its segment only, a prompt token causally, a node to the prompt and to its
    own ancestors. Positions restart at 0 in each segment and a node sits at the prompt's length plus its depth,
    so every token sees exactly what it sees in its completion's own row.
    """

    ids: torch.Tensor        # (R, L) tokens, padded
    pos: torch.Tensor        # (R, L) long positions
    sees: torch.Tensor       # (R, L, L) bool: token i attends to token j
    need: torch.Tensor       # (K,) long: flat indices r * L + i of the tokens whose logits are used
    path: torch.Tensor       # (b, T) long: for completion token k of each row, the index into ``need`` of its logits

    def to(self, device: torch.device) -> "PrefixTrees":
        return PrefixTrees(*(t.to(device) for t in (self.ids, self.pos, self.sees, self.need, self.path)))


#: Target length of a packed prefix-tree row. Attention over a packed row costs its length squared (the mask
#: hides most of it), so rows are kept short; a segment longer than this gets a row of its own.
ROW_TOKENS = 256


def prefix_trees(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], t: int,
                 pad_id: int = 0) -> PrefixTrees:
    """:class:`PrefixTrees` of ``prompts[u]`` and ``completions[u]`` (the completions of prompt ``u``, in the
    micro-batch's row order), for a micro-batch whose longest completion has ``t`` tokens."""
    import numpy as np

    segments = []   # (tokens, positions, parent within the segment or -1 for causal prompt tokens, paths)
    for prompt, comps in zip(prompts, completions):
        p = len(prompt)
        index: dict[tuple[int, int], int] = {}
        toks, pos, parent = list(prompt), list(range(p)), [-1] * p
        paths = []
        for c in comps:
            at, path = p - 1, [p - 1]   # token 0 is predicted by the prompt's last position
            for k, tok in enumerate(c[:-1]):
                j = index.setdefault((at, tok), len(toks))
                if j == len(toks):
                    toks.append(tok)
                    pos.append(p + k)
                    parent.append(at)
                path.append(j)
                at = j
            paths.append(path[:len(c)])
        segments.append((toks, pos, parent, paths))
    # Pack segments, longest first, into the first row with room.
    order = sorted(range(len(segments)), key=lambda u: -len(segments[u][0]))
    cap = max(ROW_TOKENS, max(len(seg[0]) for seg in segments))
    rows: list[list[int]] = []
    fill: list[int] = []
    for u in order:
        n = len(segments[u][0])
        r = next((r for r in range(len(rows)) if fill[r] + n <= cap), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(u)
        fill[r] += n
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos_t = torch.zeros((len(rows), width), dtype=torch.long)
    sees = np.zeros((len(rows), width, width), dtype=bool)
    sees[:, np.arange(width), np.arange(width)] = True   # padding sees itself: no row of the softmax is empty
    start = {}
    for r, members in enumerate(rows):
        at = 0
        for u in members:
            toks, pos, parent, _ = segments[u]
            n = len(toks)
            ids[r, at:at + n] = torch.tensor(toks, dtype=torch.long)
            pos_t[r, at:at + n] = torch.tensor(pos, dtype=torch.long)
            p = len(prompts[u])
            block = sees[r, at:at + n, at:at + n]
            block[:p, :p] = np.tril(np.ones((p, p), dtype=bool))
            for j in range(p, n):
                block[j] = block[parent[j]]
                block[j, j] = True
            start[u] = r * width + at
            at += n
    flat = [[start[u] + j for j in path] for u, (_, _, _, paths) in enumerate(segments) for path in paths]
    need = sorted({i for path in flat for i in path})
    where = {i: k for k, i in enumerate(need)}
    path_t = torch.zeros((len(flat), t), dtype=torch.long)   # past a completion's end: any index (masked out)
    for row, path in enumerate(flat):
        path_t[row, :len(path)] = torch.tensor([where[i] for i in path], dtype=torch.long)
    return PrefixTrees(ids, pos_t, torch.from_numpy(sees), torch.tensor(need, dtype=torch.long), path_t)


def supports_prefix_tree(model) -> bool:
    """Whether :func:`shared_prompt_logits` can run ``model`` on :class:`PrefixTrees`: a decoder that takes a
    4D attention mask, and logits that are just ``lm_head`` of its hidden states (no scaling or soft-capping),
    since only the positions whose logits are used go through the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (getattr(base.config, "model_type", None) in ("llama", "mistral", "qwen2", "qwen3")
            and hasattr(base, "model") and hasattr(base, "lm_head") and supports_shared_prompt(model))


def make_group_microbatches(samples: Sequence[Sample], rows: int, pad_id: int,
                            include: Sequence[int] | None = None, tree: bool = False) -> list[GroupMicroBatch]:
    """Split ``samples`` (those at positions ``include``, default all) into micro-batches of at most
    ``rows`` completions, keeping the completions of one prompt together so the prompt runs once
    (and, with ``tree``, their shared beginnings once: :class:`PrefixTrees`).

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
        trees = prefix_trees([samples[c[0]].prompt_ids for c in mb_chunks],
                             [[samples[i].completion_ids for i in c] for c in mb_chunks], t, pad_id) if tree else None
        out.append(GroupMicroBatch(idx, pids, pmask, owner, comp, mask, trees))
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

    With ``gmb.tree`` set, prompts and completions run instead as packed prefix trees (:class:`PrefixTrees`),
    and each completion gathers its logits from the tokens on its path.
    """
    from transformers.cache_utils import DynamicCache

    if not supports_shared_prompt(model):
        raise UsageError("shared_prompt_logits needs plain KV caches and no gradient checkpointing; "
                         "use make_microbatches + completion_logits for this model")
    t = gmb.completion_ids.shape[1]
    if gmb.tree is not None:
        # One pass over the packed rows; the head runs only where logits are used, and each completion gathers
        # its tokens' logits (a shared node's gradient sums its completions' terms).
        tree = gmb.tree
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.model(input_ids=tree.ids, attention_mask=tree.sees[:, None], position_ids=tree.pos,
                            use_cache=False).last_hidden_state
        logits = base.lm_head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, tree.need)).float()   # (K, V)
        return logits.index_select(0, tree.path.reshape(-1)).view(len(gmb.index), t, -1)
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
