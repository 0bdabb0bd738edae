"""A lean decode step for llama-family models on a CPU: the same maths as the transformers forward, fewer ops.

For a small model a decode step is mostly fixed cost, not arithmetic. ``tiny`` (4 layers, 192 wide) multiplies a
few dozen rows by 192 x 192 matrices, microseconds each, but the transformers forward wraps every one of them in
module calls, output dataclasses, mask and cache bookkeeping, a rotary table computed afresh, and an RMSNorm
of seven ops. On tiny's GRPO rollouts the model call was two thirds of sampling and most of it was that
overhead. This step keeps only the tensor ops:

* the query, key and value projections run as one matmul on their concatenated weights, and so do the gate
  and up projections of the MLP (one call where there were three, and two);
* the attention scale is folded into the query weights (and bias), which rotary embedding commutes with;
* the rotary tables are computed once per generate call for every position it can reach, by the model's own
  rotary module, and indexed per step;
* RMSNorm is ``torch.rms_norm``, one fused op;
* attention is the C decode kernel over the :class:`~reasonlab.policies.shared_prompt.SharedPromptCache`, and
  the new keys and values are written straight into its rows.

The result is the transformers forward's up to float rounding; the sampler's tests check every sample's
log-probs against teacher-forced scoring of its tokens. It is used only where all of that holds: float32 on
the CPU, the shared-prompt cache with the C kernel, llama/qwen2/qwen3 layers made of plain ``nn.Linear``
modules (not LoRA-wrapped ones) and a rotary type whose frequencies do not change with the sequence length.
Anything else decodes through the model's own forward.

``matmul_dtype=bfloat16`` (``HFPolicy(decode_dtype="bfloat16")``, opt-in) runs the step's matrix products on
bfloat16 copies of the weights, accumulated in float32, and keeps norms, rotary, attention and the residual
stream in float32. A small model's decode step streams every weight once per step for a few dozen rows, so
half the bytes is most of the gain (tiny's GRPO sampling: about 0.75 of the time). The samples then come from a
slightly different distribution than the float32 weights': on tiny, a mean gap of 6e-4 nats per token against
teacher-forced float32 log-probs (p99 0.02), which RL trainers log as ``sampler_gap_mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonlab.policies import decode_kernel, shared_prompt

#: Rotary types whose frequencies change with the sequence length at run time; their tables cannot be
#: computed once.
DYNAMIC_ROPE = ("dynamic", "longrope")


class _Matrix:
    """``x @ weight.T + bias``. A weight of at least ``PACK_MIN_WEIGHTS`` entries is also kept oneDNN-prepacked
    for calls of at most ``PACK_MAX_ROWS`` rows, as the sampler's ``PackedLinear`` does (smollm2's MLP and
    LM head; tiny has none so large). With ``dtype`` bfloat16 every weight is kept as a prepacked bfloat16
    copy, the input is rounded to bfloat16 and the product (accumulated in float32) comes back as float32."""

    __slots__ = ("weight", "bias", "packed", "low")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.float32):
        from reasonlab.policies.hf import PACK_MIN_WEIGHTS, _can_pack

        self.low = dtype != torch.float32
        if self.low:
            weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
        self.weight, self.bias = weight, bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64) \
            if (self.low or weight.numel() >= PACK_MIN_WEIGHTS) and _can_pack() else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from reasonlab.policies.hf import PACK_MAX_ROWS

        if self.low:
            x = x.to(self.weight.dtype)
        if self.packed is not None and x.shape[0] <= PACK_MAX_ROWS:
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        else:
            y = F.linear(x, self.weight, self.bias)
        return y.float() if self.low else y


@dataclass(frozen=True)
class _Layer:
    norm1: torch.Tensor        # (E,)
    qkv: _Matrix               # ((Hq + 2 Hkv) D, E), the query rows pre-scaled (unless q_norm is set)
    q_norm: torch.Tensor | None   # (D,) qwen3's per-head norms, the query's pre-scaled
    k_norm: torch.Tensor | None
    o: _Matrix                 # (E, Hq D)
    norm2: torch.Tensor        # (E,)
    gate_up: _Matrix           # (2 I, E)
    down: _Matrix              # (E, I)
    act: object                # the MLP's activation module (SiLU for these families)


def _stacked(*mods) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights and biases of the linears ``mods`` stacked (their outputs concatenated)."""
    weight = torch.cat([m.weight.detach() for m in mods]) if len(mods) > 1 else mods[0].weight.detach()
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                          for m in mods])
    return weight, bias


def _matrix(*mods, dtype: torch.dtype = torch.float32) -> _Matrix:
    """The linears ``mods`` as one :class:`_Matrix`."""
    return _Matrix(*_stacked(*mods), dtype)


def _plain_linear(m) -> bool:
    from reasonlab.policies.hf import _packed_linear_class

    return type(m) in (torch.nn.Linear, _packed_linear_class())


def supported(model) -> bool:
    """Can :class:`LeanDecoder` run ``model``'s decode steps (with a shared-prompt cache)?"""
    cfg = model.config
    if not shared_prompt.supported(model) or not decode_kernel.available():
        return False
    if (cfg.rope_parameters or {}).get("rope_type", "default") in DYNAMIC_ROPE:
        return False
    try:
        inner = model.model
        params = [inner.embed_tokens.weight, model.lm_head.weight, inner.norm.weight]
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            linears = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if not all(_plain_linear(x) for x in linears + [model.lm_head]):
                return False
            params += [x.weight for x in linears] + [layer.input_layernorm.weight,
                                                     layer.post_attention_layernorm.weight]
            # These families' norms are all weight * x / rms(x); a norm of another form is not this step's.
            if not all(type(n).__name__.endswith("RMSNorm") for n in (layer.input_layernorm,
                                                                      layer.post_attention_layernorm)):
                return False
    except AttributeError:
        return False
    return all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)


def weights_key(model) -> tuple:
    """Changes whenever the model's weights may have: storage, in-place writes, or a (fused) optimizer step."""
    from reasonlab.policies.hf import _OPTIMIZER_STEPS, _packed_linear_class

    _packed_linear_class()   # registers the optimizer-step counter
    return (_OPTIMIZER_STEPS[0], tuple((p.data_ptr(), p._version) for p in model.parameters()))


class LeanDecoder:
    """One decode step of ``model`` over a shared-prompt cache; built from the weights as they are now."""

    def __init__(self, model, max_positions: int, matmul_dtype: torch.dtype = torch.float32):
        cfg = model.config
        inner = model.model
        a0 = inner.layers[0].self_attn
        self.head_dim = a0.head_dim
        self.n_q = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        scale = a0.scaling
        self.eps = inner.norm.variance_epsilon
        self.embed = inner.embed_tokens.weight.detach()
        self.final_norm = inner.norm.weight.detach()
        dt = matmul_dtype
        self.lm_head = _matrix(model.lm_head, dtype=dt)
        q_rows = self.n_q * self.head_dim
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            w, b = _stacked(a.q_proj, a.k_proj, a.v_proj)
            if q_norm is None:
                # softmax(q k / sqrt(d)) with the 1 / sqrt(d) in q's weights: rotation is linear, so it commutes.
                w = torch.cat([w[:q_rows] * scale, w[q_rows:]])
                b = torch.cat([b[:q_rows] * scale, b[q_rows:]]) if b is not None else None
            else:
                # qwen3 normalises each query head after the projection: the scale goes into that norm's weight.
                q_norm, k_norm = q_norm.weight.detach() * scale, k_norm.weight.detach()
            self.layers.append(_Layer(
                norm1=layer.input_layernorm.weight.detach(), qkv=_Matrix(w, b, dt), q_norm=q_norm, k_norm=k_norm,
                o=_matrix(a.o_proj, dtype=dt), norm2=layer.post_attention_layernorm.weight.detach(),
                gate_up=_matrix(m.gate_proj, m.up_proj, dtype=dt), down=_matrix(m.down_proj, dtype=dt),
                act=m.act_fn))
        # cos/sin for every position, from the model's own rotary module: (max_positions, D) each.
        pos = torch.arange(max_positions, device=self.embed.device)[None]
        cos, sin = inner.rotary_emb(self.embed[:1][None], pos)
        half = self.head_dim // 2
        # emb = cat(freqs, freqs): both halves share one table. rotate_half(x) * sin = cat(-x2, x1) * sin.
        self.cos, self.sin = cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous()

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of ``x (B, H, D)`` with per-row ``cos/sin (B, 1, D/2)``."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: shared_prompt.SharedPromptCache
             ) -> torch.Tensor:
        """Next-token logits ``(B, V)`` for ``tokens (B,)`` at ``positions (B,)``; appends their keys/values."""
        b, d, hq, hkv = tokens.shape[0], self.head_dim, self.n_q, self.n_kv
        x = F.embedding(tokens, self.embed)                                        # (B, E)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]      # (B, 1, D/2)
        e = x.shape[-1]
        for layer, lc in zip(self.layers, cache.layers):
            h = torch.rms_norm(x, (e,), layer.norm1, self.eps)
            qkv = layer.qkv(h).view(b, hq + 2 * hkv, d)
            v = qkv[:, hq + hkv:]
            if layer.q_norm is None:
                qk = self._rotate(qkv[:, :hq + hkv], cos, sin)
                q, k = qk[:, :hq], qk[:, hq:]
            else:
                q = self._rotate(torch.rms_norm(qkv[:, :hq], (d,), layer.q_norm, self.eps), cos, sin)
                k = self._rotate(torch.rms_norm(qkv[:, hq:hq + hkv], (d,), layer.k_norm, self.eps), cos, sin)
            lc.update(k[:, :, None], v[:, :, None])   # (B, Hkv, 1, D) written in place at the next position
            att = decode_kernel.decode_attention(q.reshape(b, hkv, hq // hkv, d).contiguous(), lc.prompt_keys,
                                                 lc.prompt_values, cache.keep, lc.gen_keys, lc.gen_values,
                                                 cache.starts, lc.t)
            x = x + layer.o(att.view(b, hq * d))
            h = torch.rms_norm(x, (e,), layer.norm2, self.eps)
            gu = layer.gate_up(h)
            gate, up = gu.chunk(2, dim=-1)
            x = x + layer.down(layer.act(gate) * up)
        x = torch.rms_norm(x, (e,), self.final_norm, self.eps)
        return self.lm_head(x)
