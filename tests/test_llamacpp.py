"""The llama.cpp backend on the built-in SmolLM2 GGUF, and its numpy sampler against hand-made logits."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from reasonlab.errors import UsageError
from reasonlab.policies.llamacpp import LlamaCppPolicy, log_softmax, sample_token
from reasonlab.policies.models import smollm2_gguf_path
from reasonlab.types import SamplingParams

CHAT = [{"role": "user", "content": "Name three colors."}]
TEXT = "Once upon a time, in a small village,"
EOS = 2  # <|im_end|> in SmolLM2


@pytest.fixture(scope="module")
def policy():
    # One thread: on a busy machine llama.cpp's spinning worker threads slow each other down a lot.
    p = LlamaCppPolicy(smollm2_gguf_path(), n_ctx=1024, n_threads=1, name="smollm2")
    yield p
    p.close()


def check_completion(policy, c, sampling):
    assert len(c.logprobs) == len(c.token_ids) >= 1
    assert all(lp <= 0.0 for lp in c.logprobs)
    assert len(c.token_ids) <= sampling.max_new_tokens
    assert c.prompt_tokens == len(c.prompt_token_ids) > 0
    if c.finish_reason == "length":
        assert len(c.token_ids) == sampling.max_new_tokens
    else:
        assert c.finish_reason == "stop"
    if not sampling.stop or c.token_ids[-1] == EOS:
        assert policy.detokenize(c.token_ids) == c.text  # special tokens (EOS) render as nothing


# ---- the sampler, on hand-made logits ------------------------------------------------------------

def test_log_softmax_matches_definition():
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    expected = np.log(np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum())
    np.testing.assert_allclose(log_softmax(x), expected, atol=1e-12)


def test_sample_token_top_p_and_top_k_keep_the_right_sets():
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    rng = np.random.default_rng(0)
    only_best = {sample_token(logits, 1.0, 0, 0.6, rng) for _ in range(200)}
    assert only_best == {1}  # 0.6 alone reaches top_p = 0.6
    draws = np.array([sample_token(logits, 1.0, 0, 0.7, rng) for _ in range(3000)])
    assert set(draws.tolist()) == {1, 2}  # 0.6 + 0.3 needed for 0.7
    assert abs((draws == 1).mean() - 2 / 3) < 0.04  # renormalized 0.6 : 0.3
    assert {sample_token(logits, 1.0, 1, 1.0, rng) for _ in range(100)} == {1}  # top-k 1 = greedy
    hot = np.array([sample_token(logits, 100.0, 0, 1.0, rng) for _ in range(3000)])
    assert all(abs((hot == k).mean() - 1 / 3) < 0.04 for k in range(3))  # high temperature: uniform


def test_sample_token_flat_distribution_needs_more_than_the_pool():
    # 2000 equally likely tokens: the nucleus for top_p=0.9 is 1800 tokens, beyond the 512-candidate
    # shortcut, so the full sort must kick in.
    logits = np.zeros(2000)
    rng = np.random.default_rng(1)
    draws = {sample_token(logits, 1.0, 0, 0.9, rng) for _ in range(4000)}
    assert 1500 < len(draws) <= 1801


# ---- the backend on SmolLM2 -----------------------------------------------------------------------

def test_greedy_is_deterministic_and_reuses_the_prompt(policy):
    sp = SamplingParams(temperature=0, max_new_tokens=12, n=2)
    a = policy.generate([CHAT], sp)
    b = policy.generate([CHAT], sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    # both samples of one call decode from the same cached prompt: identical when greedy
    assert a[0].token_ids == a[1].token_ids and a[0].text == a[1].text
    assert a[0].prompt_index == a[1].prompt_index == 0
    for c in a:
        check_completion(policy, c, sp)
    # log-probs are the model's own: the greedy token is the most likely one, under every temperature
    assert a[0].logprobs[0] > np.log(0.05)


def test_sampling_n_is_prompt_major_with_consistent_tokens(policy):
    sp = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=123)
    out = policy.generate([CHAT, TEXT], sp)
    assert len(out) == 6
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    assert out[0].prompt_token_ids == policy.tokenize(CHAT) and out[3].prompt_token_ids == policy.tokenize(TEXT)
    for c in out:
        check_completion(policy, c, sp)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS  # the end-of-turn token is kept (trainers learn to stop)


def test_max_new_tokens_gives_length(policy):
    sp = SamplingParams(temperature=0, max_new_tokens=4)
    (c,) = policy.generate([TEXT], sp)
    assert c.finish_reason == "length" and len(c.token_ids) == 4 and len(c.logprobs) == 4


def test_stop_string_cuts_text(policy):
    full = policy.generate([TEXT], SamplingParams(temperature=0, max_new_tokens=20))[0]
    words = full.text.split()
    assert len(words) >= 6, full.text
    stop = " " + words[4]
    cut = full.text.index(stop)
    (c,) = policy.generate([TEXT], SamplingParams(temperature=0, max_new_tokens=20, stop=(stop, "never-seen")))
    assert c.finish_reason == "stop"
    assert c.text == full.text[:cut]
    assert stop not in c.text
    # the tokens that spelled the stop string were sampled and are kept
    assert policy.detokenize(c.token_ids).startswith(c.text + stop)
    assert c.token_ids == full.token_ids[:len(c.token_ids)]


def test_seeds_reproduce_and_differ(policy):
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=7)
    a = policy.generate([TEXT, CHAT], sp)
    b = policy.generate([TEXT, CHAT], sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    c = policy.generate([TEXT, CHAT], sp.replace(seed=8))
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    # sample j depends on (seed, i, j) only, not on how many samples were drawn
    (one,) = policy.generate([TEXT], sp.replace(n=1))
    assert one.token_ids == a[0].token_ids
    # without a seed successive calls differ
    d = policy.generate([TEXT], sp.replace(seed=None))
    e = policy.generate([TEXT], sp.replace(seed=None))
    assert [x.token_ids for x in d] != [x.token_ids for x in e]


def test_prompt_is_evaluated_once_for_n_samples(policy, monkeypatch):
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=4, seed=0)
    policy.generate([CHAT], sp)  # leaves the default system prompt in the KV cache
    evaluated: list[int] = []
    real_eval = policy._llm.eval
    monkeypatch.setattr(policy._llm, "eval", lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1])
    prompt = [{"role": "user", "content": "Say something about the sea."}]
    n_prompt = len(policy.tokenize(prompt))
    out = policy.generate([prompt], sp)
    sampled = sum(len(c.token_ids) for c in out)
    # The prompt at most once, plus one evaluation per sampled token that was not the last.
    assert sum(evaluated) <= n_prompt + sampled
    assert evaluated[0] < n_prompt // 2  # the shared system prompt was reused, not re-evaluated
    assert evaluated[1:] == [1] * (len(evaluated) - 1)
    evaluated.clear()
    policy.generate([prompt], sp)
    assert max(evaluated) == 1  # same prompt again: only sampled tokens are evaluated


def test_too_long_prompt_is_a_usage_error(policy):
    with pytest.raises(UsageError, match="context window is 1024"):
        policy.generate(["word " * 1500], SamplingParams(max_new_tokens=2))


def test_render_and_tokens_match_transformers(policy):
    """The chat template from the GGUF renders exactly like transformers' apply_chat_template."""
    from transformers import AutoTokenizer

    from reasonlab.policies.models import smollm2_hf_checkpoint

    tok = AutoTokenizer.from_pretrained(smollm2_hf_checkpoint())
    conversations = [
        CHAT,
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "ünïcödé 日本 x²"}],
    ]
    for msgs in conversations:
        assert policy.render(msgs) == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert policy.tokenize(msgs) == list(ids)
    text = "  Hello world\n\n  ünïcödé <|im_start|>"
    assert policy.tokenize(text) == tok(text)["input_ids"]
