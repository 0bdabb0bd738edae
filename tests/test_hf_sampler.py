"""The transformers sampler: exactness against model.generate, seeds, stops, log-probs, filtering."""

import contextlib
import math
from unittest import mock

import pytest
import torch

from reasonlab.policies import hf
from reasonlab.policies.hf import HFPolicy, draw, filter_logits, roomy_cache, sample_next
from reasonlab.types import SamplingParams


@pytest.fixture(scope="module")
def policy(random_tiny_dir):
    return HFPolicy(random_tiny_dir, device="cpu", max_batch_size=8)


PROMPTS = ["Q: 12+7=?\nA: ", "Q: 3-1+40=?\nA: ", "Q: 5=?\nA: ", "Q: 99+99+99+1=?\nA: "]


@contextlib.contextmanager
def batch_rows(model):
    """The batch rows of every model pass (prefill and decode steps, through the model's forward or the lean
    decode step), in order."""
    from reasonlab.policies import lean_decode

    rows: list[int] = []
    real = lean_decode.LeanDecoder.step

    def lean_step(self, tokens, positions, cache):
        rows.append(tokens.shape[0])
        return real(self, tokens, positions, cache)

    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        with mock.patch.object(lean_decode.LeanDecoder, "step", lean_step):
            yield rows
    finally:
        hook.remove()


def test_greedy_matches_model_generate_with_left_padding(policy):
    ours = policy.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=20))
    tok = policy.tokenizer
    for prompt, comp in zip(PROMPTS, ours):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        ref = policy.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                    pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert comp.token_ids == ref[:len(comp.token_ids)]
        if comp.finish_reason == "length":
            assert len(comp.token_ids) == 20


def test_prompt_major_order_and_counts(policy):
    out = policy.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1))
    assert len(out) == len(PROMPTS) * 3
    assert [c.prompt_index for c in out] == [i for i in range(len(PROMPTS)) for _ in range(3)]
    for c in out:
        assert c.prompt_tokens == len(policy.encode(PROMPTS[c.prompt_index]))
        assert len(c.logprobs) == len(c.token_ids) <= 8
        assert all(lp <= 0 for lp in c.logprobs)


def test_seeded_sampling_is_reproducible(policy):
    sp = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=123)
    a = [c.token_ids for c in policy.generate(PROMPTS, sp)]
    b = [c.token_ids for c in policy.generate(PROMPTS, sp)]
    c = [c.token_ids for c in policy.generate(PROMPTS, sp.replace(seed=124))]
    assert a == b
    assert a != c


def test_logprobs_match_teacher_forced_scoring(policy):
    out = policy.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=7))
    scored = policy.logprobs_of([c.prompt_token_ids for c in out], [c.token_ids for c in out])
    for c, lp in zip(out, scored):
        assert lp.shape == (len(c.token_ids),)
        torch.testing.assert_close(torch.tensor(c.logprobs), lp.float(), atol=2e-4, rtol=1e-4)


def test_stop_strings_cut_text_and_stop_generation(policy):
    free = policy.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=30))[0]
    assert len(free.text) >= 4, "random model should babble for a while"
    stop = free.text[2:4]
    cut = policy.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=30, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert free.text.startswith(cut.text)
    assert len(cut.token_ids) < len(free.token_ids) or free.finish_reason == "stop"


def test_finished_rows_are_dropped_but_results_unchanged(policy):
    # Same rows alone and in a big batch where most rows stop early: the sampled ids must agree
    # under greedy decoding (compaction must not mix up rows).
    sp = SamplingParams(temperature=0, max_new_tokens=16, stop=("1",))
    alone = [policy.generate([p], sp)[0].token_ids for p in PROMPTS]
    together = [c.token_ids for c in policy.generate(PROMPTS, sp)]
    assert alone == together


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, 1.0, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, 1.0, 0, 0.7)          # 0.5 + 0.3 reaches 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p_small = filter_logits(logits, 1.0, 0, 0.1)    # the top token always survives
    assert torch.isfinite(p_small[0, 0]) and torch.isinf(p_small[0, 1:]).all()
    t = filter_logits(logits, 0.5, 0, 1.0)
    torch.testing.assert_close(t, logits / 0.5)


def test_sample_next_reports_unmodified_logprob():
    logits = torch.log(torch.tensor([[0.6, 0.4]]))
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_next(logits, SamplingParams(temperature=0.3, top_k=1), g)
    assert tok.item() == 0
    assert lp.item() == pytest.approx(math.log(0.6), abs=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 0, 1.0), (0.7, 20, 0.9)])
def test_sample_next_in_row_chunks_draws_as_one_batch(temperature, top_k, top_p):
    # Rows are sampled SAMPLE_ENTRIES // V at a time on a CPU (16 for a 49k vocabulary); the draws and log-probs
    # must be those of one batch (same generator stream, same rows), and the log-probs those of the unmodified
    # distribution.
    vocab = 49152
    logits = torch.randn(3 * (hf.SAMPLE_ENTRIES // vocab) + 5, vocab, generator=torch.Generator().manual_seed(7)) * 4
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    tok, lp = sample_next(logits, sp, torch.Generator().manual_seed(11))
    whole_tok, whole_lp = hf._sample_rows(logits, sp, torch.Generator().manual_seed(11))
    assert tok.tolist() == whole_tok.tolist()
    torch.testing.assert_close(lp, whole_lp)
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1))


def test_bucketed_prefill_matches_one_padded_batch(random_tiny_dir, policy):
    many = PROMPTS * 3 + ["Q: 1=?\nA: 1", "Q: 123+456+789=?\nA: "]
    bucketed = HFPolicy(random_tiny_dir, device="cpu", prefill_rows=3, model=policy.model, tokenizer=policy.tokenizer)
    single = HFPolicy(random_tiny_dir, device="cpu", prefill_rows=64, model=policy.model, tokenizer=policy.tokenizer)
    sp = SamplingParams(n=2, temperature=0, max_new_tokens=12)
    a, b = bucketed.generate(many, sp), single.generate(many, sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)


def test_draw_follows_the_distribution_and_never_picks_filtered_tokens():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    picks = draw(probs.expand(200_000, -1), g)
    freq = torch.bincount(picks, minlength=6).double() / picks.numel()
    assert freq[[0, 2, 5]].sum() == 0
    # 200k draws: the standard error of each share is about 0.001.
    torch.testing.assert_close(freq, probs.double(), atol=5e-3, rtol=0)
    again = draw(probs.expand(200_000, -1), torch.Generator().manual_seed(0))
    assert torch.equal(picks, again)


def test_draw_across_blocks_matches_the_distribution():
    # A vocabulary of several DRAW_BLOCKs: mass in the first and last token of blocks, a whole empty
    # block, unnormalised weights, and a final partial block.
    from reasonlab.policies.hf import DRAW_BLOCK

    v = 3 * DRAW_BLOCK + 10
    w = torch.zeros(v)
    w[[0, DRAW_BLOCK - 1, 2 * DRAW_BLOCK, v - 1]] = torch.tensor([1.0, 3.0, 2.0, 4.0])  # block 1 is empty
    picks = draw(w.expand(200_000, -1), torch.Generator().manual_seed(1))
    freq = torch.bincount(picks, minlength=v).double() / picks.numel()
    assert set(torch.nonzero(freq).flatten().tolist()) == {0, DRAW_BLOCK - 1, 2 * DRAW_BLOCK, v - 1}
    torch.testing.assert_close(freq, (w / w.sum()).double(), atol=5e-3, rtol=0)
    # A single token with all the mass, anywhere, is always the pick.
    for t in (0, DRAW_BLOCK, v - 1):
        one = torch.zeros(4, v)
        one[:, t] = 1.0
        assert draw(one, torch.Generator().manual_seed(t)).tolist() == [t] * 4


def test_roomy_cache_appends_in_place_and_matches_the_plain_cache(policy):
    from transformers.cache_utils import DynamicCache

    model = policy.model
    ids = torch.tensor([policy.tokenizer(PROMPTS[0])["input_ids"]] * 2)
    roomy, plain = roomy_cache(model), DynamicCache(config=model.config)
    assert roomy is not None
    with torch.inference_mode():
        for cache in (roomy, plain):
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        for layer in roomy.layers:
            layer.reserve(8)
        buffers = [layer.kbuf.data_ptr() for layer in roomy.layers]
        roomy.batch_select_indices(torch.tensor([1]))
        plain.batch_select_indices(torch.tensor([1]))
        step = ids[1:, :1]
        for t in range(6):   # past the reserved room's first half, and compacted rows keep their room
            a = model(input_ids=step, past_key_values=roomy, use_cache=True).logits
            b = model(input_ids=step, past_key_values=plain, use_cache=True).logits
            torch.testing.assert_close(a, b)
            step = a[:, -1].argmax(-1, keepdim=True)
    for r, p in zip(roomy.layers, plain.layers):
        torch.testing.assert_close(r.keys, p.keys)
        assert r.kbuf.shape[-2] == ids.shape[1] + 8     # the reserved room held; no regrowth
        assert r.keys.data_ptr() == r.kbuf.data_ptr()    # keys are a view of the buffer, not a copy
    assert buffers != [layer.kbuf.data_ptr() for layer in roomy.layers]   # select copied the buffers once


def test_shared_prefix_runs_once_and_changes_nothing(policy):
    from reasonlab.policies.hf import prefill, shared_prefix_len

    tok = policy.tokenizer
    head = "You are a careful calculator. Work it out, then answer.\n" * 3
    prompts = [tok(head + p)["input_ids"] for p in PROMPTS + ["Q: 7*6=?\nA: the answer is "]]
    k = shared_prefix_len(prompts)
    assert k >= len(tok(head)["input_ids"]) - 1
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2      # each prompt keeps a token of its own
    model, calls = policy.model, []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        with torch.inference_mode():
            shared = prefill(model, prompts, policy.pad_id, bucket_rows=2, min_shared_tokens=1)
            n_shared = sum(calls)
            calls.clear()
            plain = prefill(model, prompts, policy.pad_id, bucket_rows=2, min_shared_tokens=10**9)
            n_plain = sum(calls)
    finally:
        hook.remove()
    assert n_shared < n_plain - (len(prompts) - 2) * k          # the prefix ran once, not once per prompt
    torch.testing.assert_close(shared[1], plain[1], atol=1e-4, rtol=1e-4)
    # One decode step on each cache: the [prefix | padding | suffix] layout attends to the same tokens.
    with torch.inference_mode():
        outs = []
        for cache, logits, mask, pos in (shared, plain):
            step = logits.argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            outs.append(model(input_ids=step, attention_mask=mask, position_ids=pos[:, -1:] + 1,
                              past_key_values=cache, use_cache=True).logits[:, -1])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_packed_linears_match_plain_linears_and_follow_weight_updates():
    from reasonlab.policies import hf

    if not hf._can_pack():
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(0)
    big = torch.nn.Linear(600, 1024)            # 614k weights: packed
    small = torch.nn.Linear(64, 64)             # below PACK_MIN_WEIGHTS: left alone
    model = torch.nn.Sequential(big, torch.nn.ReLU(), torch.nn.Linear(1024, 64), small)
    x = torch.randn(16, 600)
    with torch.inference_mode():
        want = model(x)
        with hf.packed_linears(model):
            assert type(big) is not torch.nn.Linear and type(small) is torch.nn.Linear
            got = model(x)
            assert "_packed" in big.__dict__
    assert type(big) is torch.nn.Linear
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # An in-place update (what an optimizer step does) must reach the packed copy.
    with torch.no_grad():
        big.weight.mul_(-0.5)
    with torch.inference_mode():
        want = model(x)
        with hf.packed_linears(model):
            got = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # With gradients on, the packed class takes nn.Linear's path, so training still works inside.
    with hf.packed_linears(model):
        model(x).sum().backward()
    assert big.weight.grad is not None and big.weight.grad.abs().sum() > 0
    # A fused AdamW step (what the trainers take) writes the weights without bumping their version
    # counters; the sampler must still see the new weights, not the packed copy of the old ones.
    version = big.weight._version
    torch.optim.AdamW(model.parameters(), lr=0.5, fused=True).step()
    assert big.weight._version == version  # why the version alone is not enough
    with torch.inference_mode():
        want = model(x)
        with hf.packed_linears(model):
            got = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(params=["kernel", "pytorch"])
def decode_attention(request, monkeypatch):
    """Run a test with the C decode-attention kernel and with the PyTorch attention it replaces."""
    from reasonlab.policies import decode_kernel

    if request.param == "kernel" and not decode_kernel.available():
        pytest.skip("no C compiler: the kernel is not built")
    if request.param == "pytorch":
        monkeypatch.setattr(decode_kernel, "available", lambda: False)
    return request.param


def test_shared_prompt_cache_matches_the_repeated_cache(policy, decode_attention):
    # Decode steps over one prompt row per prompt must give the logits of the plain cache with the prompt
    # repeated per sample, also after rows finish unevenly and a whole prompt's rows are gone.
    from reasonlab.policies import shared_prompt
    from reasonlab.policies.hf import prefill

    model, n = policy.model, 3
    assert shared_prompt.supported(model)
    prompts = [policy.encode(p) for p in PROMPTS]  # four lengths: left padding inside the prompt part
    with torch.inference_mode():
        cache, _, mask, pos = prefill(model, prompts, policy.pad_id, 2)
        shared = shared_prompt.SharedPromptCache.from_prefill(model.config, cache, mask, n, 8)
        plain, _, plain_mask, _ = prefill(model, prompts, policy.pad_id, 2)
        plain.batch_repeat_interleave(n)
        plain_mask = plain_mask.repeat_interleave(n, 0)
        cur = pos[:, -1].repeat_interleave(n)
        tok = torch.arange(len(prompts) * n) % 20 + 4
        for step in range(5):
            if step == 2:  # prompt 1 loses all its rows, prompt 2 one of three
                keep = torch.tensor([0, 1, 2, 6, 8, 9, 10, 11])
                shared.batch_select_indices(keep)
                plain.batch_select_indices(keep)
                tok, cur, plain_mask = tok[keep], cur[keep], plain_mask[keep]
                assert not shared.regular and shared.n_prompts == 3
            plain_mask = torch.cat([plain_mask, plain_mask.new_ones((len(tok), 1))], dim=1)
            cur = cur + 1
            with shared_prompt.decoding_with(model, shared):
                got = model(input_ids=tok[:, None], position_ids=cur[:, None], past_key_values=shared,
                            use_cache=True).logits[:, -1]
            want = model(input_ids=tok[:, None], attention_mask=plain_mask, position_ids=cur[:, None],
                         past_key_values=plain, use_cache=True).logits[:, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            tok = got.argmax(-1)
    assert model.config._attn_implementation != shared_prompt.ATTENTION_NAME


def test_sampler_with_and_without_the_shared_prompt_cache_agree(random_tiny_dir, policy, decode_attention):
    many = PROMPTS * 2 + ["Q: 1=?\nA: 1"]
    kw = dict(device="cpu", model=policy.model, tokenizer=policy.tokenizer, max_batch_size=12)
    on = HFPolicy(random_tiny_dir, shared_prompt_kv=True, **kw)
    off = HFPolicy(random_tiny_dir, shared_prompt_kv=False, **kw)
    for n in (1, 4):
        sp = SamplingParams(n=n, temperature=1.0, max_new_tokens=24, seed=5)
        a, b = on.generate(many, sp), off.generate(many, sp)
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        assert len({len(c.token_ids) for c in a}) > 1  # rows finished at different steps
        for x, y in zip(a, b):
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_policy():
    from reasonlab.policies import load_policy

    return load_policy("tiny", backend="hf")


@pytest.mark.parametrize("shared_kv, share_histories", [(True, True), (False, True), (True, False)])
def test_samples_that_share_a_history_decode_as_one_row(tiny_policy, shared_kv, share_histories):
    # The trained tiny model is confident on its own task: a prompt's 8 samples agree on most tokens, so the
    # decode runs one batch row per distinct history and forks it when the samples' draws differ.
    from reasonlab.tasks import load_task

    pol = HFPolicy("tiny", model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, device="cpu",
                   shared_prompt_kv=shared_kv, share_histories=share_histories)
    task = load_task("arith")
    prompts = [pol.encode(e.prompt) for e in task.examples("train")[:6]]
    with batch_rows(pol.model) as rows:
        out = pol.generate_ids(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=64, seed=3,
                                                       stop=tuple(task.stop or ())))
    assert rows[0] == len(prompts)  # the prefill: one row per prompt, not per sample
    # One sample row per step it decodes after its first token, against the batch rows the model ran.
    sample_steps = sum(len(c.token_ids) - 1 for c in out)
    if share_histories:
        assert sum(rows[1:]) < 0.6 * sample_steps
    else:  # one row per sample (finished ones ride along until they are an eighth of the batch)
        assert rows[1] == len(out) and sum(rows[1:]) >= sample_steps
    groups = [out[i:i + 8] for i in range(0, len(out), 8)]
    assert any(len({tuple(c.token_ids) for c in g}) > 1 for g in groups)  # histories did fork
    # Every sample's log-probs are those of its own tokens after its own prompt: no row read another's history.
    scored = pol.logprobs_of([c.prompt_token_ids for c in out], [c.token_ids for c in out])
    for c, lp in zip(out, scored):
        torch.testing.assert_close(torch.tensor(c.logprobs), lp.float(), atol=2e-4, rtol=1e-4)


def test_greedy_samples_of_a_prompt_decode_as_one_row(policy):
    with batch_rows(policy.model) as rows:
        out = policy.generate(PROMPTS, SamplingParams(n=4, temperature=0, max_new_tokens=12))
    assert len(rows) > 2 and max(rows) == policy.max_batch_size // 4  # the prompts of a chunk, not 4 samples each
    for i in range(0, len(out), 4):
        assert len({tuple(c.token_ids) for c in out[i:i + 4]}) == 1
