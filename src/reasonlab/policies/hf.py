"""Transformers backend: any Hugging Face causal LM, CPU or CUDA, with a sampler written for throughput.

Why not ``model.generate``: for RL rollouts and n-sample evaluation the sampler is the product, and
``generate`` leaves speed on the table in exactly the places that matter here:

* **Finished rows keep costing compute.** ``generate`` pads finished rows to the end of the batch;
  this sampler drops them from the batch (and from the KV cache) as they finish, so a batch costs
  what its live rows cost.
* **Padding costs prefill compute.** A left-padded batch of prompts spends FLOPs and masked
  attention on padding (38% of a batch of 64 GSM8K prompts). On a CPU prompts are prefilled in small
  buckets of similar length and the bucket caches are joined into one padded decode batch.
* **The prompt is prefilled once for n samples, and read once per step for all of them.** Prompts
  are prefilled once per distinct prompt; on a CPU the decode cache keeps one prompt row per prompt
  and each step's attention reads it once for the prompt's ``n`` samples (``shared_prompt``),
  instead of repeating it ``n`` times.
* **Rows are bucketed by prompt length**, so left padding stays small.
* **A prefix common to all prompts is prefilled once** (a chat template's system turn, few-shot
  examples, a search node's question).
* **The KV cache grows in place.** ``DynamicCache`` copies every layer's whole cache at every step
  to append one token (30% of a batch-64 decode step on a CPU); ``RoomyLayer`` writes into room.
* **One uniform per row, not one per vocabulary entry.** ``torch.multinomial`` draws an exponential
  variate for each of the 49k logits of each row (14% of the step); ``draw`` inverts the CDF.
* **Prepacked weights for the decode GEMMs.** A decode step multiplies a few dozen rows by each
  matrix, a shape where oneDNN with the weight reordered once beats MKL on the weight as stored
  (about 2x on smollm2's LM head on a CPU); ``packed_linears`` swaps them in for the sampler only.

The sampler is token-in/token-out: a completion carries the exact sampled ids and the model's own
log-probability of each (from the unmodified logits, before temperature/top-k/top-p), which is what
RL trainers compare against. ``logprobs_of`` scores given token ids, for trainers and scorers.

Run ``python benchmarks/generation.py`` to compare with ``model.generate`` and llama.cpp.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Sequence

import torch

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy, find_stop
from reasonlab.types import Completion, Prompt, SamplingParams


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 halves memory traffic on GPUs; on CPUs without bf16 units it is slower than fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(table)}")
    return table[dtype]


# ----------------------------------------------------------------------------------------------
# Sampling: pure functions on logits
# ----------------------------------------------------------------------------------------------

def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering. ``logits: (B, V)`` float32.

    Filtered-out entries become ``-inf``. At least one token always survives (the argmax).
    """
    logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass *before* it already reaches top_p (so the top token is kept).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


#: Logits sampled together, in entries (rows x vocabulary). A (64, 49k) float32 step is 12.5 MB per pass, and
#: sampling makes about eight passes with their temporaries: as one batch they spill out of the last-level
#: cache; 16 rows at a time stay in it (on 2 cores at batch 64: 23 -> 10 ms a step, and 7 ms with the passes
#: saved below). A small vocabulary (tiny's 55 tokens) samples every row at once, each chunk being a dozen
#: small ops.
SAMPLE_ENTRIES = 16 * 49152


def sample_next(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token per row. ``logits: (B, V)``. Returns ``(tokens (B,), logp (B,))``.

    ``logp`` is the log-probability of the chosen token under the model's *unmodified*
    distribution (log-softmax of the raw logits), as trainers need it. On a CPU, rows are sampled
    about ``SAMPLE_ENTRIES`` logits at a time; the generator is consumed row by row either way, so the draws
    are the same as for one batch.
    """
    logits = logits.float()
    rows = max(1, SAMPLE_ENTRIES // logits.shape[-1])
    if logits.device.type == "cpu" and logits.shape[0] > rows:
        parts = [_sample_rows(logits[i:i + rows], sampling, generator) for i in range(0, logits.shape[0], rows)]
        return torch.cat([t for t, _ in parts]), torch.cat([lp for _, lp in parts])
    return _sample_rows(logits, sampling, generator)


def _sample_rows(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    if sampling.greedy:
        tokens = logits.argmax(-1)
        lse = torch.logsumexp(logits, dim=-1)
    else:
        top = logits.amax(-1, keepdim=True)
        # Each row's max is now 0, and so is the max of its tempered, filtered logits (the argmax always
        # survives filtering): exp() needs no second max-and-subtract.
        shifted = logits - top
        if sampling.temperature == 1.0 and sampling.top_k == 0 and sampling.top_p >= 1.0:
            # Unnormalised weights: draw() scales its uniform by each row's total, so no softmax division;
            # and their sum gives the log-normaliser for free.
            weights = shifted.exp_()
            tokens = draw(weights, generator)
            lse = (top + weights.sum(-1, keepdim=True).log()).squeeze(-1)
        else:
            lse = (top + shifted.exp().sum(-1, keepdim=True).log()).squeeze(-1)
            tokens = draw(filter_logits(shifted, sampling.temperature, sampling.top_k, sampling.top_p).exp_(),
                          generator)
    picked = logits.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, picked - lse


DRAW_BLOCK = 256


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One exact draw per row from ``probs: (B, V)`` (non-negative weights; rows need not sum to 1) by
    inverting the CDF. Returns ``(B,)``.

    Why not ``torch.multinomial``: on a CPU it draws an exponential variate for every vocabulary entry,
    132 ms per step for 64 rows of a 49k vocabulary on 2 cores, a quarter of a decode step; this draws
    one uniform per row. The inversion has two levels: a float64 CDF over blocks of ``DRAW_BLOCK``
    tokens picks a block, then a float64 CDF inside that one block picks the token, so the cumulative
    sum runs over V/256 + 256 entries per row instead of V (a full float64 cumsum of 64 x 49k is 16 ms
    of a step). ``right=True`` skips zero-probability (filtered) tokens and blocks even at their
    boundaries, and each search target is kept strictly below its CDF's total, so rounding can never
    step past the last token with mass.
    """
    b, v = probs.shape
    nb = -(-v // DRAW_BLOCK)
    if v % DRAW_BLOCK:
        probs = torch.nn.functional.pad(probs, (0, nb * DRAW_BLOCK - v))
    blocks = probs.view(b, nb, DRAW_BLOCK)
    # Block totals are summed in the weights' own dtype (float32 sums of 256 terms are good to ~1e-7
    # relative, the rounding the float32 weights themselves carry; a float64 sum would first copy the
    # whole (B, V) tensor), and accumulated across blocks in float64.
    cdf = blocks.sum(-1).double().cumsum(-1)                                   # (B, nb)
    u = torch.rand((b, 1), generator=generator, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    u = torch.minimum(u, torch.nextafter(cdf[:, -1:], torch.zeros_like(u)))
    j = torch.searchsorted(cdf, u, right=True).clamp_(max=nb - 1)             # (B, 1) block index
    before = torch.where(j > 0, cdf.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, j[:, :, None].expand(b, 1, DRAW_BLOCK)).squeeze(1).double().cumsum(-1)
    rest = torch.minimum(u - before, torch.nextafter(inner[:, -1:], torch.zeros_like(u)))
    k = torch.searchsorted(inner, rest, right=True).clamp_(max=DRAW_BLOCK - 1)
    return (j * DRAW_BLOCK + k).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Prefill: the prompt part of the KV cache
# ----------------------------------------------------------------------------------------------

def _left_padded(prompts: list[list[int]], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids, mask


@functools.cache
def _roomy_layer_class():
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        """A growing KV-cache layer that appends in place instead of concatenating.

        ``DynamicLayer`` appends a decode step's key/value with ``torch.cat``, which copies the whole
        cache of every layer at every step: 30% of a decode step at batch 64 on 2 CPU cores, more than
        attention itself. Here ``keys``/``values`` are views of the first ``L`` positions of a buffer
        with room for more; an update writes into the room (doubling it when full, so appends stay
        amortized O(1)). Attention reads the view: on a CPU the strided view costs SDPA nothing
        measurable. ``reserve`` sizes the room once when the number of new tokens is known.
        """

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.kbuf: torch.Tensor | None = None
            self.vbuf: torch.Tensor | None = None

        def _owns(self) -> bool:
            # keys may have been replaced by a method this class does not override (crop, reorder_cache):
            # then the buffer is stale and the next update starts a new one from ``keys``.
            return (self.kbuf is not None and self.keys is not None and self.keys.numel() > 0
                    and self.keys.data_ptr() == self.kbuf.data_ptr() and self.keys.shape[0] == self.kbuf.shape[0])

        def reserve(self, room: int) -> None:
            length = self.get_seq_length()
            if length == 0 or (self._owns() and self.kbuf.shape[-2] >= length + room):
                return   # nothing cached yet: the first update sets the shapes
            b, h, _, d = self.keys.shape
            kbuf, vbuf = self.keys.new_empty((b, h, length + room, d)), self.values.new_empty((b, h, length + room, d))
            kbuf[:, :, :length] = self.keys
            vbuf[:, :, :length] = self.values
            self.kbuf, self.vbuf = kbuf, vbuf
            self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.get_seq_length() == 0:
                self.lazy_initialization(key_states, value_states)
                self.keys, self.values = key_states, value_states
                self.kbuf = self.vbuf = None
                return self.keys, self.values
            length, new = self.get_seq_length(), key_states.shape[-2]
            if not self._owns() or self.kbuf.shape[-2] < length + new:
                self.reserve(max(new, length))
            self.kbuf[:, :, length:length + new] = key_states
            self.vbuf[:, :, length:length + new] = value_states
            self.keys, self.values = self.kbuf[:, :, :length + new], self.vbuf[:, :, :length + new]
            return self.keys, self.values

        def _rebatch(self, pick) -> None:
            length = self.get_seq_length()
            if self._owns():   # keep the room, but copy only the cached positions into it
                keys, values = pick(self.keys), pick(self.values)
                self.kbuf = self.kbuf.new_empty((keys.shape[0], *self.kbuf.shape[1:]))
                self.vbuf = self.vbuf.new_empty((values.shape[0], *self.vbuf.shape[1:]))
                self.kbuf[:, :, :length], self.vbuf[:, :, :length] = keys, values
                self.keys, self.values = self.kbuf[:, :, :length], self.vbuf[:, :, :length]
            elif length > 0:
                self.keys, self.values = pick(self.keys), pick(self.values)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep rows ``indices``; a repeated index copies the row (a sampled history that forks)."""
            self._rebatch(lambda t: t.index_select(0, indices))

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._rebatch(lambda t: t.repeat_interleave(repeats, dim=0))

    return RoomyLayer


def roomy_cache(model):
    """A ``DynamicCache`` for ``model`` whose layers append in place (see ``RoomyLayer``), or ``None``
    when the model's layers are not all plain full-attention layers (sliding windows, linear attention)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=model.config)
    if not cache.layers or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    layer_cls = _roomy_layer_class()
    cache.layers = [layer_cls() for _ in cache.layers]
    return cache


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to all ``prompts``, leaving every prompt at least one
    token of its own (the last prompt token's logits start the completion)."""
    if not prompts:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    k = 0
    while k < limit and all(p[k] == first[k] for p in prompts):
        k += 1
    return k


def prefill(model, prompts: list[list[int]], pad_id: int, bucket_rows: int, min_shared_tokens: int = 64):
    """Run the prompts through ``model``; return ``(cache, last_logits (U, V), mask (U, P), pos (U, P))``.

    Two savings over one left-padded batch, both exact (same keys, values and logits up to float
    rounding):

    * **Buckets.** Prompts are prefilled in buckets of ``bucket_rows`` prompts of similar length, each
      padded only to its own longest, and the buckets' keys/values are copied into the one decode
      cache. A single padded batch spends FLOPs on padding (38% of a batch of 64 GSM8K chat prompts);
      one prompt at a time runs small, inefficient GEMMs. On 2 CPU cores, 64 GSM8K prompts prefill in
      30 s as one batch, 19 s one by one, 15 s in buckets of 8. A GPU wants one bucket.
    * **A shared prefix runs once.** Chat templates open with the same system turn (24 tokens of
      every smollm2 GSM8K prompt), few-shot prompts with the same examples, and search expansions
      with the same question. The longest prefix common to all prompts is run once and its keys and
      values are given to every bucket, when that saves at least ``min_shared_tokens`` token passes.

    The decode cache lays each row out as ``[shared prefix | left padding | own suffix]``: padding is
    masked wherever it sits, and positions come from the mask, so each row sees exactly its prompt.
    """
    from transformers.cache_utils import DynamicCache

    dev = next(model.parameters()).device
    u, plen = len(prompts), max(len(p) for p in prompts)
    cache = roomy_cache(model)
    if cache is None:
        # Sliding-window or other non-plain layers: their caches cannot be joined, so one padded batch.
        cache = DynamicCache(config=model.config)
        ids, mask = _left_padded(prompts, plen, pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1], mask, pos
    k = shared_prefix_len(prompts)
    if (u - 1) * k < min_shared_tokens:
        k = 0
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    if k:
        pcache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompts[0][:k]], device=dev), past_key_values=pcache, use_cache=True,
              logits_to_keep=1)
        prefix_kv = [(layer.keys, layer.values) for layer in pcache.layers]
    suffixes = [p[k:] for p in prompts]
    width_all = max(len(x) for x in suffixes)
    order = sorted(range(u), key=lambda r: len(suffixes[r]))
    mask = torch.zeros((u, k + width_all), dtype=torch.long, device=dev)
    mask[:, :k] = 1
    logits = None
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for start in range(0, u, bucket_rows):
        rows = order[start:start + bucket_rows]
        width = max(len(suffixes[r]) for r in rows)
        ids, bmask = _left_padded([suffixes[r] for r in rows], width, pad_id)
        ids, bmask = ids.to(dev), bmask.to(dev)
        bcache = DynamicCache(config=model.config)
        for layer, (pk, pv) in zip(bcache.layers, prefix_kv):
            layer.update(pk.expand(len(rows), -1, -1, -1), pv.expand(len(rows), -1, -1, -1))
        att = torch.cat([bmask.new_ones((len(rows), k)), bmask], dim=1)
        out = model(input_ids=ids, attention_mask=att, position_ids=k + (bmask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=bcache, use_cache=True, logits_to_keep=1).logits[:, -1]
        idx = torch.tensor(rows, device=dev)
        if logits is None:
            logits = out.new_empty((u, out.shape[-1]))
            for layer in bcache.layers:
                h, d = layer.keys.shape[1], layer.keys.shape[3]
                # Zeros, not empty: padding is masked, but a garbage NaN there would still poison
                # attention's weighted sum (0 * NaN = NaN).
                keys.append(layer.keys.new_zeros((u, h, k + width_all, d)))
                values.append(layer.values.new_zeros((u, h, k + width_all, d)))
        logits[idx] = out
        mask[idx, k + width_all - width:] = bmask
        for li, layer in enumerate(bcache.layers):
            keys[li][idx, :, k + width_all - width:] = layer.keys[:, :, k:]
            values[li][idx, :, k + width_all - width:] = layer.values[:, :, k:]
    for li, (pk, pv) in enumerate(prefix_kv):
        keys[li][:, :, :k] = pk
        values[li][:, :, :k] = pv
    for li, layer in enumerate(cache.layers):
        layer.update(keys[li], values[li])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return cache, logits, mask, pos


# ----------------------------------------------------------------------------------------------
# Decode GEMMs: prepacked weights for the small-row matmuls of a CPU decode step
# ----------------------------------------------------------------------------------------------

#: Linears with at least this many weights get a prepacked copy (smollm2: the MLP's 576x1536 and the
#: 49k x 576 LM head; not the 576x576 and 576x192 attention projections, which oneDNN runs no faster).
PACK_MIN_WEIGHTS = 1 << 19
#: Inputs with more rows than this (prefill, scoring) run the ordinary matmul: big GEMMs gain nothing.
PACK_MAX_ROWS = 256


def _can_pack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


#: Bumped after every optimizer step in this process (a global post-step hook, registered when packing is
#: first used). Fused optimizers (``AdamW(fused=True)``, what the trainers use) update weights without
#: bumping their version counters, so the version alone would leave the sampler on stale packed weights.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


@functools.cache
def _packed_linear_class():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(_count_optimizer_step)

    class PackedLinear(torch.nn.Linear):
        """``nn.Linear`` whose no-grad, few-row CPU calls use a oneDNN-prepacked copy of the weight.

        A decode step multiplies a few dozen rows by every weight matrix. For those shapes MKL's sgemm,
        which ``F.linear`` calls with the weight as stored, reaches about half the throughput of oneDNN
        with the weight reordered once into its blocked layout: on 2 AVX2 cores, smollm2's LM head
        (64 x 576 by 576 x 49k) takes 72-93 ms against 42-44 ms, and the MLP matrices about 1.1-1.5x.
        Same fp32 weights and maths; only the summation order differs (outputs agree to ~1e-4 absolute
        on logits of magnitude ~10). The packed copy is keyed on the weight's storage, its version
        counter (in-place writes: ``load_state_dict``, unfused optimizers) and the count of optimizer steps
        taken in this process (fused optimizers do not bump versions), so any of them triggers a repack on
        next use.
        Anything else (gradients on, many rows, another dtype or device) takes ``nn.Linear``'s path.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight
            if (torch.is_grad_enabled() or x.dtype != torch.float32 or w.dtype != torch.float32
                    or x.device.type != "cpu" or x.numel() > PACK_MAX_ROWS * x.shape[-1]):
                return super().forward(x)
            key = (w.data_ptr(), w._version, _OPTIMIZER_STEPS[0])
            packed = self.__dict__.get("_packed")
            if packed is None or packed[0] != key:
                packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 64))
                self.__dict__["_packed"] = packed
            return torch.ops.mkldnn._linear_pointwise(x, packed[1], self.bias, "none", [], "")

    return PackedLinear


class packed_linears:
    """Context manager: the model's large ``nn.Linear`` layers run as :class:`PackedLinear` inside it.

    The class of each chosen module is swapped on entry and restored on exit, so trainers and anything
    else that uses the model outside the sampler see plain ``nn.Linear`` modules; the packed weights
    stay cached on the modules between calls (about one extra copy of the packed matrices' memory).
    A no-op off the CPU, without oneDNN, or when ``enabled`` is false.
    """

    def __init__(self, model, enabled: bool = True):
        self.swapped: list[torch.nn.Module] = []
        dev = next(model.parameters()).device
        if not (enabled and dev.type == "cpu" and _can_pack()):
            return
        cls = _packed_linear_class()
        self.swapped = [m for m in model.modules() if type(m) is torch.nn.Linear
                        and m.weight.dtype == torch.float32 and m.weight.numel() >= PACK_MIN_WEIGHTS]
        self.cls = cls

    def __enter__(self):
        for m in self.swapped:
            m.__class__ = self.cls
        return self

    def __exit__(self, *exc):
        for m in self.swapped:
            m.__class__ = torch.nn.Linear
        return False


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------

class HFPolicy(Policy):
    """A transformers causal LM as a policy (generation) and a scorer of token ids (log-probs)."""

    def __init__(self, path: str, *, device: str = "auto", dtype: str = "auto", name: str | None = None,
                 max_batch_size: int = 64, prefill_rows: int | None = None, model=None, tokenizer=None,
                 threads: int | None = None, pack_weights: bool = True, shared_prompt_kv: bool = True,
                 share_histories: bool = True, lean_decode: bool = True, decode_dtype: str = "float32"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or Path(str(path)).name
        self.path = str(path)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        # Decode steps on a CPU multiply the large matrices through oneDNN-prepacked copies (``packed_linears``).
        self.pack_weights = pack_weights
        # Decode steps on a CPU read each prompt's keys/values once for all its samples (``shared_prompt``).
        self.shared_prompt_kv = shared_prompt_kv
        # Samples of a prompt that drew the same tokens so far decode as one batch row (see ``_sample_chunk``).
        self.share_histories = share_histories
        # Decode steps over the shared-prompt cache skip the transformers forward's wrappers (``lean_decode``).
        self.lean_decode = lean_decode
        # bfloat16: the lean step's matrix products on bfloat16 weight copies (faster, no longer exact).
        if decode_dtype not in ("float32", "bfloat16"):
            raise UsageError(f"decode_dtype is float32 or bfloat16, not {decode_dtype!r}")
        self.decode_dtype = decode_dtype
        self._lean: tuple[tuple, int, Any] | None = None   # (weights key, positions, LeanDecoder)
        self._stop_cache: dict[tuple[str, ...], list[bool] | None] = {}
        # Prompts prefilled together (see ``prefill``): small buckets on a CPU, one batch on a GPU.
        self.prefill_rows = prefill_rows or (8 if self.device.type == "cpu" else max_batch_size)
        if threads:
            torch.set_num_threads(threads)
        if model is None and self.path in ("tiny", "smollm2") and not Path(self.path).exists():
            raise UsageError(f"{self.path!r} is a built-in model name, not a checkpoint path: use "
                             f"reasonlab.policies.load_policy({self.path!r}, backend='hf')")
        try:
            # Local files only: a directory, or a hub id already in the cache. Nothing is downloaded at run
            # time, and a name that is neither fails at once instead of after the hub client's retries.
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = model or AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype,
                                                                       local_files_only=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load a transformers model from {self.path!r}: {str(e).splitlines()[0]}") from e
        self.model.to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)

    # -- prompts ------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(f"model {self.name} has no chat template; use a plain-text prompt format")
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: Prompt) -> list[int]:
        # A rendered chat template already holds its special tokens; raw text gets the tokenizer's own.
        return self.tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str))["input_ids"]

    # -- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Completion]:
        return self.generate_ids([self.encode(p) for p in prompts], sampling)

    @torch.inference_mode()
    def generate_ids(self, prompt_ids: Sequence[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Sample from already-tokenized prompts (the token-in entry point)."""
        n = sampling.n
        out: list[Completion | None] = [None] * (len(prompt_ids) * n)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        # Bucket by length so left padding stays small; each chunk holds up to max_batch_size rows.
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        per_chunk = max(1, self.max_batch_size // n)
        for c in range(0, len(order), per_chunk):
            idx = order[c:c + per_chunk]
            with packed_linears(self.model, self.pack_weights):
                done = self._sample_chunk([prompt_ids[i] for i in idx], sampling, generator)
            for j, i in enumerate(idx):
                for k in range(n):
                    comp = done[j * n + k]
                    comp.prompt_index = i
                    out[i * n + k] = comp
        return out  # type: ignore[return-value]

    def _sample_chunk(self, prompts: list[list[int]], sampling: SamplingParams,
                      generator: torch.Generator | None) -> list[Completion]:
        dev, n = self.device, sampling.n
        u = len(prompts)
        plen = max(len(p) for p in prompts)
        if plen == 0:
            raise UsageError("empty prompt: nothing to condition on")
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        max_new = sampling.max_new_tokens
        if max_pos is not None and plen + max_new > max_pos:
            max_new = max(1, max_pos - plen)
        from reasonlab.policies import shared_prompt

        # Left padding: every row's last prompt token sits in the same column.
        cache, logits, mask, pos = prefill(self.model, prompts, self.pad_id, self.prefill_rows)
        shared = self.shared_prompt_kv and dev.type == "cpu" and shared_prompt.supported(self.model) \
            and all(hasattr(layer, "reserve") for layer in cache.layers)
        # Decode rows per prompt at the start: one (its samples share the empty history), or one per sample.
        fan = 1 if self.share_histories else n
        if shared:
            # Each prompt's keys/values stay one row per prompt; its samples read them together. The
            # cache holds each prompt's padding itself, so the decode steps take no attention mask.
            cache = shared_prompt.SharedPromptCache.from_prefill(self.model.config, cache, mask, fan, max_new)
            mask = None
        elif fan > 1:
            cache.batch_repeat_interleave(fan)
            mask = mask.repeat_interleave(fan, 0)
        if fan > 1:
            logits, pos = logits.repeat_interleave(fan, 0), pos.repeat_interleave(fan, 0)
        for layer in cache.layers:   # room for every new token, so decode steps append in place
            if hasattr(layer, "reserve"):
                layer.reserve(max_new)
        lean = self._lean_decoder(int(pos[:, -1].max()) + max_new + 1) if shared else None
        rows = u * n
        # A batch row of the decode is a *history*: a prompt and the tokens sampled after it. Sample rows that
        # drew the same tokens so far share one (their next-token distribution is the same), so the model
        # runs once for all of them; a history forks into one batch row per distinct next token drawn. Each
        # sample row still draws from its own history's distribution, so the samples are distributed as
        # one batch row per sample would give. A confident policy shares a lot: tiny's GRPO groups of 8
        # decode a quarter to a third as many rows as they have samples. ``members``: each batch row's sample rows.
        members: list[list[int]] = [list(range(p * n, (p + 1) * n)) for p in range(u)] if fan == 1 else \
            [[r] for r in range(rows)]
        cur_pos = pos[:, -1]
        toks: list[list[int]] = [[] for _ in range(rows)]
        lps: list[list[float]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        stop_cut: list[bool] = [False] * rows
        stops = sampling.stop
        tail_len = max((len(s) for s in stops), default=0) + 8
        may_stop = self._stop_enders(tuple(stops)) if stops else None

        for step in range(max_new):
            owner = [b for b, m in enumerate(members) for _ in m]
            row_logits = logits if len(owner) == logits.shape[0] and all(len(m) == 1 for m in members) \
                else logits.index_select(0, torch.tensor(owner, device=logits.device))
            tok, lp = sample_next(row_logits, sampling, generator)
            # The next batch rows: each history's continuing samples, split by the token they drew.
            children: list[dict[int, list[int]]] = [{} for _ in members]
            for r, b, t, l in zip((r for m in members for r in m), owner, tok.tolist(), lp.tolist()):
                toks[r].append(t)
                lps[r].append(l)
                if t in self.eos_ids:
                    finish[r] = "stop"
                elif stops and (may_stop is None or t >= len(may_stop) or may_stop[t]) and find_stop(
                        self.tokenizer.decode(toks[r][-tail_len:], skip_special_tokens=True), stops) != -1:
                    # Decoding only a short tail is enough to see a stop string that just completed.
                    finish[r], stop_cut[r] = "stop", True
                else:
                    children[b].setdefault(t, []).append(r)
            n_next = sum(len(c) for c in children)
            if not n_next or step == max_new - 1:
                break
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            cur_pos = cur_pos + 1
            n_done = sum(not c for c in children)
            # Rebuild the batch (a copy of the cache) when a history forked, or when finished ones are an
            # eighth of it; otherwise finished rows ride along unread, which costs less than the copy.
            if n_next > len(members) - n_done or n_done * 8 >= len(members):
                live = sum(len(rs) for c in children for rs in c.values())
                if (live - n_next) * 8 < live:
                    # Sharing now saves under an eighth of the rows, and every later fork would copy the cache
                    # again (smollm2 at T = 0.8 on GSM8K forks nearly every step): one row per sample from here.
                    split = [(b, t, [r]) for b, c in enumerate(children) for t, rs in c.items() for r in rs]
                else:
                    split = [(b, t, rs) for b, c in enumerate(children) for t, rs in c.items()]
                sel = torch.tensor([b for b, _, _ in split], device=dev)   # ascending: rows stay ordered by prompt
                cache.batch_select_indices(sel)
                cur_pos = cur_pos[sel]
                if mask is not None:
                    mask = mask[sel]
                members = [rs for _, _, rs in split]
                tok_in = torch.tensor([t for _, t, _ in split], device=dev)[:, None]
            else:
                members = [next(iter(c.values()), []) for c in children]
                tok_in = torch.tensor([next(iter(c), self.pad_id) for c in children], device=dev)[:, None]
            if lean is not None:
                logits = lean.step(tok_in[:, 0], cur_pos, cache)
            else:
                with shared_prompt.decoding_with(self.model, cache) if shared else contextlib.nullcontext():
                    logits = self.model(input_ids=tok_in, attention_mask=mask, position_ids=cur_pos[:, None],
                                        past_key_values=cache, use_cache=True).logits[:, -1]
        return self._finish(prompts, n, toks, lps, finish, stop_cut, stops)

    def _stop_enders(self, stops: tuple[str, ...]) -> list[bool] | None:
        """Per token id: can a stop string have just been completed by sampling this token? ``None``: any can.

        A stop string that was not in the text before a token was appended must end inside that token's
        text, so the token's own text holds the stop's last character. Tokens whose text alone is a broken
        character (a byte-level piece of one) or empty may change the text before them, and are always
        checked, as is every token when a stop ends in whitespace (tokenizers drop a piece's leading space
        when it is decoded alone). The sampler then decodes a row's tail only after such a token: on tiny's
        arithmetic (stop ``"\nQ:"``) that is a few tokens in a hundred instead of every one.
        """
        if stops not in self._stop_cache:
            if any(not s or s[-1].isspace() for s in stops):
                self._stop_cache[stops] = None
            else:
                ends = {s[-1] for s in stops}
                texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))],
                                                    skip_special_tokens=True)
                self._stop_cache[stops] = [not x or "\ufffd" in x or any(c in x for c in ends) for x in texts]
        return self._stop_cache[stops]

    def _lean_decoder(self, positions: int):
        """The :class:`~reasonlab.policies.lean_decode.LeanDecoder` of the current weights (built again only
        after they change), or ``None`` where the model's own forward must decode."""
        from reasonlab.policies import lean_decode

        # Under autocast (a trainer's mixed precision) the model's own forward decides the dtypes.
        if not self.lean_decode or torch.is_autocast_enabled(self.device.type) or \
                not lean_decode.supported(self.model):
            return None
        key = (lean_decode.weights_key(self.model), self.decode_dtype)
        if self._lean is None or self._lean[0] != key or self._lean[1] < positions:
            self._lean = None   # free the old copy before building the new one
            dtype = torch.bfloat16 if self.decode_dtype == "bfloat16" else torch.float32
            self._lean = (key, positions, lean_decode.LeanDecoder(self.model, positions, dtype))
        return self._lean[2]

    def _finish(self, prompts, n, toks, lps, finish, stop_cut, stops) -> list[Completion]:
        res = []
        for r in range(len(toks)):
            ids = toks[r]
            lp = lps[r]
            text = self.decode_ids(ids)
            if stop_cut[r]:
                cut = find_stop(text, stops)
                if cut != -1:
                    text = text[:cut]
            prompt = prompts[r // n]
            res.append(Completion(text=text, token_ids=list(ids), logprobs=list(lp), finish_reason=finish[r],
                                  prompt_tokens=len(prompt), prompt_token_ids=list(prompt)))
        return res

    def decode_ids(self, ids: Sequence[int]) -> str:
        """The text of sampled token ids, as completions carry it (EOS and special tokens left out)."""
        return self.tokenizer.decode([t for t in ids if t not in self.eos_ids], skip_special_tokens=True)

    # -- scoring ------------------------------------------------------------------------------
    def logprobs_of(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]],
                    batch_size: int = 16) -> list[torch.Tensor]:
        """Log-probability of each completion token given its prompt: one ``(T_i,)`` tensor each."""
        return logprobs_of(self.model, prompt_ids, completion_ids, pad_id=self.pad_id, batch_size=batch_size)


def logprobs_of(model, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], *,
                pad_id: int = 0, batch_size: int = 16, grad: bool = False) -> list[torch.Tensor]:
    """Per-token log-probs of ``completion_ids[i]`` after ``prompt_ids[i]`` (right-padded batches).

    Returns a list of ``(T_i,)`` tensors. With ``grad=True`` the graph is kept (for trainers).
    """
    dev = next(model.parameters()).device
    out: list[torch.Tensor] = []
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        for s in range(0, len(prompt_ids), batch_size):
            ps, cs = prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size]
            seqs = [list(p) + list(c) for p, c in zip(ps, cs)]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, x in enumerate(seqs):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for r, (p, c) in enumerate(zip(ps, cs)):
                out.append(logp[r, len(p) - 1:len(p) - 1 + len(c)])
    return out
