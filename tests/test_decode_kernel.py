"""The C decode-attention kernel against plain PyTorch attention, and its loader's fallbacks."""

import pytest
import torch

from reasonlab.policies import decode_kernel

needs_kernel = pytest.mark.skipif(not decode_kernel.available(), reason="no C compiler: the kernel is not built")


def reference(q, pk, pv, keep, gk, gv, starts, t):
    """Softmax attention of each row's queries over its prompt's kept tokens and its own t generated ones."""
    b, h, g, d = q.shape
    out = torch.empty_like(q)
    prompt_of = torch.repeat_interleave(torch.arange(len(starts) - 1), starts.diff())
    for row in range(b):
        u = prompt_of[row]
        kept = keep[u].bool()
        keys = torch.cat([pk[u][:, kept], gk[row, :, :t]], dim=1)      # (H, n + t, D)
        values = torch.cat([pv[u][:, kept], gv[row, :, :t]], dim=1)
        probs = (q[row] @ keys.transpose(-1, -2)).softmax(-1)            # (H, G, n + t)
        out[row] = probs @ values
    return out


@needs_kernel
@pytest.mark.parametrize("d", [64, 32, 48])  # 64: the vectorized path; others: the portable loops
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_reference_attention(d, threads):
    torch.manual_seed(d)
    h, g, p, room, t = 3, 3, 23, 9, 6
    rows_per_prompt = [2, 1, 0, 3]            # uneven groups, and a prompt with no rows left
    starts = torch.tensor([0, *torch.tensor(rows_per_prompt).cumsum(0).tolist()])
    u, b = len(rows_per_prompt), sum(rows_per_prompt)
    keep = torch.zeros(u, p, dtype=torch.uint8)
    keep[:, :4] = 1                           # a shared prefix, left padding, then each prompt's own tokens
    for i, own in enumerate([19, 7, 1, 12]):
        keep[i, p - own:] = 1
    keep[1, 10] = 1                           # a kept token alone inside the padding: runs of any length
    q = torch.randn(b, h, g, d) * d ** -0.5
    pk, pv = torch.randn(u, h, p, d), torch.randn(u, h, p, d)
    pk[keep[:, None, :, None].expand_as(pk) == 0] = float("nan")   # padding is never read
    pv[keep[:, None, :, None].expand_as(pv) == 0] = float("nan")
    gk, gv = torch.randn(b, h, room, d), torch.randn(b, h, room, d)
    gk[:, :, t:] = float("nan")                                       # nor is the unfilled room
    got = decode_kernel.decode_attention(q, pk, pv, keep, gk, gv, starts, t, threads=threads)
    want = reference(q, torch.nan_to_num(pk), torch.nan_to_num(pv), keep, gk, gv, starts, t)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_kernel_with_no_generated_tokens_yet():
    torch.manual_seed(0)
    q, pk, pv = torch.randn(2, 1, 2, 64), torch.randn(2, 1, 5, 64), torch.randn(2, 1, 5, 64)
    keep = torch.ones(2, 5, dtype=torch.uint8)
    gk = gv = torch.zeros(2, 1, 4, 64)
    starts = torch.tensor([0, 1, 2])
    got = decode_kernel.decode_attention(q, pk, pv, keep, gk, gv, starts, 0)
    torch.testing.assert_close(got, reference(q, pk, pv, keep, gk, gv, starts, 0), atol=1e-5, rtol=1e-5)


def test_usable_only_for_contiguous_float32_cpu_tensors():
    x = torch.zeros(2, 3, 4, 8)
    assert decode_kernel.usable(x, x)
    assert not decode_kernel.usable(x, x.double())
    assert not decode_kernel.usable(x.transpose(1, 2))


def test_loader_falls_back_without_a_compiler_or_when_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("REASONLAB_CACHE", str(tmp_path))
    decode_kernel.load.cache_clear()
    try:
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        assert decode_kernel.load() is None          # a failed build: a warning, and PyTorch attention
        decode_kernel.load.cache_clear()
        monkeypatch.delenv("CC")
        monkeypatch.setenv(decode_kernel.ENV_SWITCH, "0")
        assert decode_kernel.load() is None
    finally:
        decode_kernel.load.cache_clear()
