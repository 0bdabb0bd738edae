"""Decode attention over a prompt cache that each prompt's samples share (the sampler's n > 1 path).

When the sampler draws ``n`` completions of one prompt (GRPO groups, maj@k, search expansions), the
plain way repeats the prompt's keys and values ``n`` times and every decode step reads all ``n``
copies. Attention at decode is bound by those reads: on a CPU at batch 64 it is a quarter of a
smollm2 step, and the prompt is most of what it reads. Here the cache keeps two parts per layer
(Hydragen / cascade-inference style):

* the **prompt part**, one row per distinct prompt: ``(U, H_kv, P, D)``, laid out as the prefill
  left it (``[shared prefix | padding | suffix]``, padding masked by an additive bias);
* the **generated part**, one row per sample: ``(B, H_kv, room, D)``, written in place.

A decode step's queries are gathered per prompt, so one matmul reads each prompt's keys once for all
its samples (and all query heads of a key/value head: the grouped-query heads ride along as extra
rows), the generated part is read per row, and the softmax runs over both parts joined: the same
attention as over the concatenated cache, up to float rounding. Dropping finished rows touches only
the generated part and the row -> prompt map (and drops prompts with no live row).

It is used for the architectures whose attention modules call the attention interface right after
``past_key_values.update`` (llama, qwen2, qwen3), whose caches have no sliding-window layers; others
take the plain cache. The sampler switches the model's attention implementation to this one for
its decode steps only and restores it afterwards.
"""

from __future__ import annotations

import functools
import threading

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from reasonlab.policies import decode_kernel

ATTENTION_NAME = "reasonlab_shared_prompt"
ARCHITECTURES = ("llama", "qwen2", "qwen3")

_active = threading.local()


def supported(model) -> bool:
    """Can ``model`` decode over a :class:`SharedPromptCache`?"""
    cfg = model.config
    return (cfg.model_type in ARCHITECTURES and not getattr(cfg, "use_sliding_window", False)
            and all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])))


class SharedPromptLayer(DynamicLayer):
    """One layer's cache: the prompts' keys/values once per prompt, the samples' own tokens per row."""

    def __init__(self, prompt_keys: torch.Tensor, prompt_values: torch.Tensor, rows: int, room: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = prompt_keys.dtype, prompt_keys.device, True
        self.prompt_keys, self.prompt_values = prompt_keys, prompt_values           # (U, H, P, D)
        _, h, _, d = prompt_keys.shape
        self.gen_keys = prompt_keys.new_zeros((rows, h, room, d))                   # (B, H, room, D)
        self.gen_values = prompt_values.new_zeros((rows, h, room, d))
        self.t = 0
        self._expose()

    def _expose(self) -> None:
        """``keys``/``values``: the generated tokens written so far (what ``update`` returns)."""
        self.keys, self.values = self.gen_keys[:, :, :self.t], self.gen_values[:, :, :self.t]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self.t + n > self.gen_keys.shape[-2]:
            raise RuntimeError(f"shared-prompt cache is full ({self.gen_keys.shape[-2]} generated tokens)")
        self.gen_keys[:, :, self.t:self.t + n] = key_states
        self.gen_values[:, :, self.t:self.t + n] = value_states
        self.t += n
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prompt_keys.shape[-2] + self.t

    def select(self, rows: torch.Tensor, prompts: torch.Tensor | None) -> None:
        """Keep (or repeat: a history that forks) generated rows ``rows``; only the tokens written so far are
        copied, not the room left for later ones."""
        t = self.t
        keys, values = self.gen_keys.new_empty((len(rows), *self.gen_keys.shape[1:])), self.gen_values.new_empty(
            (len(rows), *self.gen_values.shape[1:]))
        keys[:, :, :t] = self.gen_keys[:, :, :t].index_select(0, rows)
        values[:, :, :t] = self.gen_values[:, :, :t].index_select(0, rows)
        self.gen_keys, self.gen_values = keys, values
        self._expose()
        if prompts is not None:
            self.prompt_keys = self.prompt_keys.index_select(0, prompts)
            self.prompt_values = self.prompt_values.index_select(0, prompts)


class SharedPromptCache(DynamicCache):
    """A decode cache of :class:`SharedPromptLayer` s plus the map from batch rows to prompts.

    ``group[b]`` is the prompt of batch row ``b`` and ``slot[b]`` its index among that prompt's live
    rows; rows stay ordered by prompt. ``bias`` ``(U, 1, 1, P)`` is 0 on each prompt's tokens and
    ``-inf`` on its padding.
    """

    def __init__(self, config, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], prompt_mask: torch.Tensor,
                 n: int, room: int):
        super().__init__(config=config)
        u = prompt_mask.shape[0]
        self.layers = [SharedPromptLayer(k, v, u * n, room) for k, v in prompt_kv]
        dtype, dev = prompt_kv[0][0].dtype, prompt_mask.device
        self.bias = torch.zeros(prompt_mask.shape, dtype=dtype, device=dev).masked_fill_(
            prompt_mask == 0, float("-inf"))[:, None, None, :]
        self.keep = (prompt_mask != 0).to(torch.uint8)   # the C kernel's form of the same mask
        self._set_groups(torch.arange(u, device=dev).repeat_interleave(n))

    @classmethod
    def from_prefill(cls, config, cache, prompt_mask: torch.Tensor, n: int, room: int) -> SharedPromptCache:
        """From ``hf.prefill``'s cache (one row per prompt) and its ``(U, P)`` mask."""
        return cls(config, [(layer.keys, layer.values) for layer in cache.layers], prompt_mask, n, room)

    def _set_groups(self, group: torch.Tensor) -> None:
        self.group = group
        counts = torch.bincount(group, minlength=self.bias.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        self.slot = torch.arange(len(group), device=group.device) - starts[group]
        self.n_prompts, self.width = int(counts.numel()), int(counts.max())
        self.starts = torch.cat([starts, starts.new_tensor([len(group)])])   # (U + 1,) row ranges per prompt
        # Every prompt has the same number of rows, in order: the group layout is a plain reshape.
        self.regular = bool((counts == self.width).all())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` (ascending); prompts left with no row are dropped."""
        group = self.group.index_select(0, indices)
        keep = torch.unique(group)  # sorted
        prompts = None
        if len(keep) < self.n_prompts:
            prompts = keep
            self.bias = self.bias.index_select(0, keep)
            self.keep = self.keep.index_select(0, keep)
            group = torch.searchsorted(keep, group)
        for layer in self.layers:
            layer.select(indices, prompts)
        self._set_groups(group)

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SharedPromptCache is built with its samples per prompt (n)")

    # -- moving query-shaped tensors between batch rows and per-prompt groups ------------------
    def to_groups(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, R, F)`` per row -> ``(U, H, width * R, F)`` per prompt (missing rows are zeros)."""
        _, h, r, f = x.shape
        if self.regular:
            g = x.view(self.n_prompts, self.width, h, r, f)
        else:
            g = x.new_zeros((self.n_prompts, self.width, h, r, f))
            g[self.group, self.slot] = x
        return g.permute(0, 2, 1, 3, 4).reshape(self.n_prompts, h, self.width * r, f)

    def to_rows(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_groups`: ``(U, H, width * R, F)`` -> ``(B, H, R, F)``."""
        u, h, wr, f = y.shape
        g = y.view(u, h, self.width, wr // self.width, f).permute(0, 2, 1, 3, 4)
        if self.regular:
            return g.reshape(len(self.group), h, wr // self.width, f)
        return g[self.group, self.slot]


def shared_prompt_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, **kwargs):
    """Attention of one decode step over a :class:`SharedPromptCache` (``key``/``value``: the generated part).

    ``query: (B, H_q, 1, D)``. Returns ``(B, 1, H_q, D)``, as the attention interface does.
    """
    cache = getattr(_active, "cache", None)
    if cache is None:  # another thread's forward while a sampler decodes: the ordinary attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap") or query.shape[2] != 1:
        raise RuntimeError("shared-prompt attention handles one decode token without sliding window or softcap")
    layer = cache.layers[module.layer_idx]
    b, hq, _, d = query.shape
    hkv = layer.prompt_keys.shape[1]
    q = query.reshape(b, hkv, hq // hkv, d) * (scaling if scaling is not None else d ** -0.5)
    if decode_kernel.available() and decode_kernel.usable(q, layer.prompt_keys, layer.prompt_values,
                                                          layer.gen_keys, layer.gen_values):
        out = decode_kernel.decode_attention(q, layer.prompt_keys, layer.prompt_values, cache.keep, layer.gen_keys,
                                             layer.gen_values, cache.starts, layer.t)
        return out.view(b, 1, hq, d), None
    # Scores against each prompt once per prompt (all its rows and query heads as rows of one matmul) ...
    prompt_scores = cache.to_rows(torch.matmul(cache.to_groups(q), layer.prompt_keys.transpose(-1, -2)) + cache.bias)
    # ... and against each row's own generated tokens; one softmax over both.
    scores = torch.cat([prompt_scores, torch.matmul(q, key.transpose(-1, -2))], dim=-1)
    probs = scores.float().softmax(-1).to(q.dtype)
    p = prompt_scores.shape[-1]
    out = (cache.to_rows(torch.matmul(cache.to_groups(probs[..., :p]), layer.prompt_values))
           + torch.matmul(probs[..., p:], value))
    return out.reshape(b, hq, 1, d).transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prompt_attention)


class decoding_with:
    """Context manager: ``model``'s attention reads ``cache`` as a shared-prompt cache inside it."""

    def __init__(self, model, cache: SharedPromptCache):
        self.model, self.cache = model, cache

    def __enter__(self):
        _register()
        self.saved = self.model.config._attn_implementation
        self.model.config._attn_implementation = ATTENTION_NAME
        _active.cache = self.cache
        return self

    def __exit__(self, *exc):
        _active.cache = None
        self.model.config._attn_implementation = self.saved
        return False
