"""The transformers sampler: exactness against model.generate, seeds, stops, log-probs, filtering."""

import math

import pytest
import torch

from reasonlab.policies.hf import HFPolicy, filter_logits, sample_next
from reasonlab.types import SamplingParams


@pytest.fixture(scope="module")
def policy(random_tiny_dir):
    return HFPolicy(random_tiny_dir, device="cpu", max_batch_size=8)


PROMPTS = ["Q: 12+7=?\nA: ", "Q: 3-1+40=?\nA: ", "Q: 5=?\nA: ", "Q: 99+99+99+1=?\nA: "]


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


def test_bucketed_prefill_matches_one_padded_batch(random_tiny_dir, policy):
    many = PROMPTS * 3 + ["Q: 1=?\nA: 1", "Q: 123+456+789=?\nA: "]
    bucketed = HFPolicy(random_tiny_dir, device="cpu", prefill_rows=3, model=policy.model, tokenizer=policy.tokenizer)
    single = HFPolicy(random_tiny_dir, device="cpu", prefill_rows=64, model=policy.model, tokenizer=policy.tokenizer)
    sp = SamplingParams(n=2, temperature=0, max_new_tokens=12)
    a, b = bucketed.generate(many, sp), single.generate(many, sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)
