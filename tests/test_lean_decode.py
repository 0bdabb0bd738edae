"""The lean decode step (``policies/lean_decode.py``) and the sampler's stop-check filter.

The lean step must give the transformers forward's samples: with one seed, the sampler with and without it
draws the same tokens, with the same log-probs up to float rounding, for llama, qwen2 (biased projections,
grouped-query heads) and qwen3 (per-head query/key norms).
"""

from unittest import mock

import pytest
import torch

from reasonlab.policies import decode_kernel, lean_decode
from reasonlab.policies.hf import HFPolicy
from reasonlab.policies.tiny import build_tokenizer
from reasonlab.types import SamplingParams

pytestmark = pytest.mark.skipif(not decode_kernel.available(), reason="no C compiler: the decode kernel is not built")

PROMPTS = ["Q: 12+7=?\nA: ", "Q: 3-1+40=?\nA: ", "Q: 5=?\nA: ", "Q: 99+99+99+1=?\nA: "]


def _model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = build_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, tie_word_embeddings=True, **common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False, **common))
        with torch.no_grad():   # transformers initialises biases to zero: make them count
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        model = Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, **common))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    with torch.no_grad():
        # Sharper than the initialisation: attention that is not near-uniform (so a wrong scale or rotation
        # shows), and next-token distributions under which samples share some of their histories.
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
        model.lm_head.weight.mul_(8) if not model.config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(3)
    return model.eval(), tok


def _policies(model, tok):
    kw = dict(device="cpu", model=model, tokenizer=tok, max_batch_size=16)
    return HFPolicy("lean", lean_decode=True, **kw), HFPolicy("plain", lean_decode=False, **kw)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_lean_decode_samples_what_the_model_forward_samples(kind):
    model, tok = _model(kind)
    assert lean_decode.supported(model)
    lean, plain = _policies(model, tok)
    steps = []
    real = lean_decode.LeanDecoder.step

    def counting(self, tokens, positions, cache):
        steps.append(tokens.shape[0])
        return real(self, tokens, positions, cache)

    for n in (1, 4):
        sp = SamplingParams(n=n, temperature=1.0, max_new_tokens=20, seed=5)
        with mock.patch.object(lean_decode.LeanDecoder, "step", counting):
            a = lean.generate(PROMPTS, sp)
            used = len(steps)
            b = plain.generate(PROMPTS, sp)
        assert used > 0 and len(steps) == used   # the lean policy decoded with it, the plain one did not
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        for x, y in zip(a, b):
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)
    # And both are the model's own log-probs of the sampled tokens (teacher forcing, no cache at all).
    scored = lean.logprobs_of([c.prompt_token_ids for c in a], [c.token_ids for c in a])
    for c, lp in zip(a, scored):
        torch.testing.assert_close(torch.tensor(c.logprobs), lp.float(), atol=2e-4, rtol=1e-4)


def test_lean_decode_follows_weight_updates():
    # An RL trainer samples, steps a fused optimizer (no version bump), and samples again: the second sampling
    # must use the new weights, not the fused copies built for the first.
    model, tok = _model("llama")
    lean, plain = _policies(model, tok)
    sp = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=9)
    lean.generate(PROMPTS, sp)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    a, b = lean.generate(PROMPTS, sp), plain.generate(PROMPTS, sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_lora_wrapped_models_decode_through_their_own_forward():
    peft = pytest.importorskip("peft")
    model, _ = _model("llama")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not lean_decode.supported(wrapped.base_model.model)


def test_stop_check_filter_changes_no_completion():
    # The sampler decodes a row's tail to look for stop strings only after a token that can end one. Sampling
    # with the filter and with every token checked must cut the same completions at the same places.
    model, tok = _model("llama")
    pol, _ = _policies(model, tok)
    stops = ("\nQ:", "1+", "A")
    table = pol._stop_enders(stops)
    vocab = tok.get_vocab()
    assert table[vocab[":"]] and table[vocab["+"]] and table[vocab["A"]]
    assert not table[vocab["7"]] and not table[vocab["\n"]]
    sp = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=2, stop=stops)
    filtered = pol.generate(PROMPTS, sp)
    pol._stop_cache[stops] = None   # check after every token
    every = pol.generate(PROMPTS, sp)
    assert [(c.text, c.token_ids, c.finish_reason) for c in filtered] == \
        [(c.text, c.token_ids, c.finish_reason) for c in every]
    assert sum(c.finish_reason == "stop" for c in every) >= 3
    # A stop that ends in whitespace turns the filter off (tokenizers may drop a piece's leading space).
    assert pol._stop_enders(("Q ",)) is None


def test_bfloat16_decode_samples_close_to_the_float32_weights():
    # Opt-in: bfloat16 weight copies in the decode step's products. Not exact, but close: the samples' log-probs
    # stay near teacher-forced float32 scoring, and differ from it (so the bfloat16 products really ran).
    model, tok = _model("llama")
    pol = HFPolicy("bf16", device="cpu", model=model, tokenizer=tok, decode_dtype="bfloat16")
    out = pol.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=20, seed=5))
    scored = pol.logprobs_of([c.prompt_token_ids for c in out], [c.token_ids for c in out])
    gap = torch.cat([(torch.tensor(c.logprobs) - lp.float()).abs() for c, lp in zip(out, scored)])
    assert 1e-5 < float(gap.mean()) < 2e-2 and float(gap.max()) < 0.5
    with pytest.raises(Exception, match="decode_dtype"):
        HFPolicy("bad", device="cpu", model=model, tokenizer=tok, decode_dtype="float16")


def test_autocast_keeps_the_model_forward():
    # A trainer's CPU mixed precision samples under autocast: the lean step (float32 only) stands aside.
    model, tok = _model("llama")
    lean, _ = _policies(model, tok)
    with mock.patch.object(lean_decode.LeanDecoder, "step", side_effect=AssertionError("lean step under autocast")):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lean.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1))
    assert all(c.token_ids for c in out)
