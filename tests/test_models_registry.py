"""Model names -> ModelSpec, backend choice in load_policy, and the smollm2 GGUF -> HF conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

import reasonlab.policies.tiny as tiny_module
from reasonlab.errors import UsageError
from reasonlab.policies import BUILTIN_MODELS, load_policy, resolve_model
from reasonlab.policies import models
from reasonlab.policies import pick_backend


def test_builtin_smollm2_points_at_the_packaged_gguf():
    spec = resolve_model("smollm2")
    assert spec.name == "smollm2"
    assert spec.gguf_path is not None and spec.gguf_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(spec.gguf_path).is_file()
    assert spec.base_url is None
    assert pick_backend(spec) == "llamacpp"
    assert pick_backend(spec, "hf") == "hf"  # convertible on demand


def test_builtin_tiny_uses_shipped_checkpoint_or_says_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_module, "ASSET_DIR", tmp_path / "tiny")
    with pytest.raises(UsageError, match="built-in model 'tiny' is missing"):
        resolve_model("tiny")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    spec = resolve_model("tiny")
    assert spec.hf_path == str(tmp_path / "tiny") and spec.gguf_path is None
    assert pick_backend(spec) == "hf"


def test_local_checkpoint_dir_and_gguf_file(tmp_path):
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    spec = resolve_model(str(ckpt))
    assert (spec.name, spec.hf_path, spec.gguf_path) == ("my-ckpt", str(ckpt), None)

    gguf = tmp_path / "model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    spec = resolve_model(str(gguf))
    assert (spec.name, spec.gguf_path, spec.hf_path) == ("model.Q8_0", str(gguf), None)
    assert pick_backend(spec) == "llamacpp"
    with pytest.raises(UsageError, match="GGUF file"):
        pick_backend(spec, "hf")
    with pytest.raises(UsageError, match="GGUF file"):
        spec.hf_checkpoint()


def test_bad_local_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model("./runs/nope/checkpoint")


def test_openai_spec():
    spec = resolve_model("openai:http://127.0.0.1:8080/v1#smollm2")
    assert (spec.base_url, spec.model_id, spec.name) == ("http://127.0.0.1:8080/v1", "smollm2", "smollm2")
    spec = resolve_model("openai:https://api.example.com/v1/")
    assert (spec.base_url, spec.model_id, spec.name) == ("https://api.example.com/v1", None, "openai")
    assert pick_backend(spec) == "openai"
    with pytest.raises(UsageError, match="backend 'openai'"):
        pick_backend(spec, "llamacpp")
    with pytest.raises(UsageError, match="expected openai:http"):
        resolve_model("openai:localhost:8080")


def test_unknown_hub_id_says_why_and_lists_builtins(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UsageError) as err:
        resolve_model("SomeOrg/NotDownloaded-1B")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'SomeOrg/NotDownloaded-1B'" in msg
    assert "not a built-in name" in msg and "not a local path" in msg and "local Hugging Face cache" in msg
    for name in BUILTIN_MODELS:
        assert name in msg


def test_hub_id_found_in_local_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--SomeOrg--Cached-1B"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    spec = resolve_model("SomeOrg/Cached-1B")
    assert spec.hf_path == str(snap) and spec.name == "SomeOrg/Cached-1B"


def test_load_policy_rejects_bad_backends_and_options(tmp_path):
    with pytest.raises(UsageError, match="unknown backend 'vllmx'"):
        load_policy("smollm2", backend="vllmx")
    with pytest.raises(UsageError, match="needs a model written openai:"):
        load_policy("smollm2", backend="openai")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="backend 'llamacpp' needs a GGUF file"):
        load_policy(str(ckpt), backend="llamacpp")
    with pytest.raises(UsageError, match="has no option 'device'"):
        load_policy("smollm2", backend="llamacpp", device="cuda")


def test_load_policy_auto_picks_backends():
    from reasonlab.policies.llamacpp import LlamaCppPolicy
    from reasonlab.policies.openai_api import OpenAIPolicy

    with load_policy("smollm2", n_ctx=512, n_threads=1) as policy:
        assert isinstance(policy, LlamaCppPolicy) and policy.name == "smollm2" and policy.n_ctx == 512
    remote = load_policy("openai:http://127.0.0.1:9/v1#m", timeout=1.0)  # no request at construction
    assert isinstance(remote, OpenAIPolicy) and remote.model == "m" and remote.base_url == "http://127.0.0.1:9/v1"


def test_conversion_marker_must_match_source(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 10)
    stamp = models._source_stamp(gguf)
    target = tmp_path / "out"
    target.mkdir()
    assert not models._is_complete(target, stamp)  # no marker: incomplete
    (target / models.COMPLETE_MARKER).write_text(json.dumps({**stamp, "size": 1}))
    assert not models._is_complete(target, stamp)  # marker of another source
    (target / models.COMPLETE_MARKER).write_text(json.dumps(stamp))
    assert models._is_complete(target, stamp)
    # The same file installed elsewhere (another venv, a CI clone) shares the conversion; other bytes do not.
    other = tmp_path / "elsewhere" / "m.gguf"
    other.parent.mkdir()
    other.write_bytes(gguf.read_bytes())
    assert models._source_stamp(other) == stamp
    other.write_bytes(b"GGUF" * 9 + b"XXXX")
    assert models._source_stamp(other) != stamp


def test_smollm2_hf_checkpoint_matches_the_gguf():
    """The converted checkpoint (cached in the real cache: ~40 s the first time) runs like the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonlab.policies.llamacpp import LlamaCppPolicy
    from reasonlab.types import SamplingParams

    path = models.smollm2_hf_checkpoint()
    assert (path / "config.json").is_file() and (path / models.COMPLETE_MARKER).is_file()
    assert resolve_model("smollm2").hf_path == str(path)  # found without converting again
    assert models.smollm2_hf_checkpoint() == path

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    msgs = [{"role": "user", "content": "Explain why the sky is blue in two sentences."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]

    with LlamaCppPolicy(models.smollm2_gguf_path(), n_ctx=512, n_threads=1) as llama:
        c = llama.generate([msgs], SamplingParams(temperature=0, max_new_tokens=24))[0]
    assert c.prompt_token_ids == list(ids)
    # Teacher-force llama.cpp's greedy completion through the converted checkpoint.
    with torch.no_grad():
        logits = model(torch.tensor([c.prompt_token_ids + c.token_ids])).logits[0].double()
    n = len(ids)
    hf_logp = torch.log_softmax(logits[n - 1:n - 1 + len(c.token_ids)], -1)
    hf_tok_logp = hf_logp[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)].numpy()
    agree = (hf_logp.argmax(-1).numpy() == np.array(c.token_ids)).mean()
    assert agree >= 0.9
    # Same weights; llama.cpp quantizes activations inside its Q4_1 matmuls, hence small differences
    # (measured: mean 0.03, max 0.19 nats).
    diff = np.abs(hf_tok_logp - np.array(c.logprobs))
    assert diff.mean() < 0.1 and diff.max() < 0.5


def test_hf_policy_never_goes_to_the_hub():
    # A built-in name passed to the low-level class, and a hub id that is not cached: one clear error at
    # once (local files only), never a download or the hub client's retries.
    from reasonlab.errors import UsageError
    from reasonlab.policies.hf import HFPolicy

    with pytest.raises(UsageError, match="built-in model name"):
        HFPolicy("tiny")
    with pytest.raises(UsageError, match="cannot load"):
        HFPolicy("nobody-here/no-such-model")


def test_hf_options_pass_on_only_what_was_set():
    from reasonlab.policies import hf_options

    assert hf_options() == {}  # llama.cpp and openai take neither option: nothing to trip over
    assert hf_options("cpu", "auto") == {"device": "cpu"}
    assert hf_options("auto", "bfloat16") == {"dtype": "bfloat16"}
