"""The OpenAI-compatible backend against a real llama-cpp-python server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import types
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from reasonlab.errors import BackendError, UsageError
from reasonlab.policies import load_policy
from reasonlab.policies.llamacpp import LlamaCppPolicy
from reasonlab.policies.models import smollm2_gguf_path
from reasonlab.policies.openai_api import OpenAIPolicy, _token_ids
from reasonlab.types import SamplingParams

pytest.importorskip("uvicorn", reason="needs llama-cpp-python[server]")

CHAT = [{"role": "user", "content": "Name three colors."}]
TEXT = "The capital of France is"
# The server's own defaults add a repetition penalty; switch it off so greedy matches llama.cpp's.
PLAIN = {"repeat_penalty": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--model_alias", "smollm2"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def local():
    p = LlamaCppPolicy(smollm2_gguf_path(), n_ctx=1024, n_threads=1)
    yield p
    p.close()


def test_text_prompt_matches_local_llamacpp(server, local):
    policy = load_policy(f"openai:{server}#smollm2", extra_body=PLAIN)
    assert isinstance(policy, OpenAIPolicy)
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    (c,) = policy.generate([TEXT], sp)
    (ref,) = local.generate([TEXT], sp)
    assert c.text == ref.text and c.text.strip()
    assert c.finish_reason == ref.finish_reason == "length"
    assert c.prompt_tokens == ref.prompt_tokens == len(local.tokenize(TEXT))
    assert c.prompt_index == 0
    assert c.logprobs is not None and len(c.logprobs) == 6
    assert c.logprobs == pytest.approx(ref.logprobs, abs=0.05)  # same weights, same raw distribution
    assert c.token_ids == []  # llama-cpp-python sends token strings only (documented)


def test_chat_prompts_n_samples_are_topped_up_and_seeded(server, local):
    policy = OpenAIPolicy(server, "smollm2", extra_body=PLAIN)
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=11)
    out = policy.generate([CHAT, TEXT], sp)
    assert len(out) == 4  # the server ignores n: the policy asked again for the rest
    assert [c.prompt_index for c in out] == [0, 0, 1, 1]
    assert all(c.prompt_tokens == len(local.tokenize(CHAT)) for c in out[:2])  # same template server-side
    for c in out:
        assert c.text and c.finish_reason in ("stop", "length")
        assert c.logprobs and all(lp <= 0 for lp in c.logprobs)
    assert out[2].text != out[3].text  # each request had its own derived seed
    again = policy.generate([TEXT], sp.replace(seed=None))
    assert [c.text for c in again] != [c.text for c in out[2:]]
    again = policy.generate([CHAT, TEXT], sp)
    assert [c.text for c in again] == [c.text for c in out]


def test_concurrent_prompts_keep_their_order(server):
    policy = OpenAIPolicy(server, None, extra_body=PLAIN, concurrency=3)  # model id asked from the server
    prompts = ["1, 2, 3,", "a, b, c,", "Monday, Tuesday,"]
    sp = SamplingParams(temperature=0, max_new_tokens=3)
    together = policy.generate(prompts, sp)
    alone = [policy.generate([p], sp)[0].text for p in prompts]
    assert [c.text for c in together] == alone
    assert [c.prompt_index for c in together] == [0, 1, 2]
    assert policy.model == "smollm2"


def test_wrong_base_url_is_a_usage_error(server):
    policy = OpenAIPolicy(server.replace("/v1", "/v2"), "smollm2")
    with pytest.raises(UsageError, match=r"rejected the request \(HTTP 404\)"):
        policy.generate([TEXT], SamplingParams(max_new_tokens=2))


def test_unreachable_server_is_one_clear_backend_error():
    url = f"http://127.0.0.1:{free_port()}/v1"  # closed right after binding: nobody listens
    policy = OpenAIPolicy(url, "m", timeout=2.0, max_retries=1)
    t0 = time.time()
    with pytest.raises(BackendError) as err:
        policy.generate([TEXT], SamplingParams(max_new_tokens=2))
    assert time.time() - t0 < 15
    msg = str(err.value)
    assert msg.startswith(f"cannot reach OpenAI-compatible server at {url}: ") and "\n" not in msg
    assert "refused" in msg.lower()


def test_token_ids_from_vllm_style_responses():
    with_ids = types.SimpleNamespace(model_extra={"token_ids": [5, 6]})
    assert _token_ids(with_ids, ["a", "b"]) == [5, 6]
    plain = types.SimpleNamespace(model_extra={})
    assert _token_ids(plain, ["token_id:17", "token_id:3"]) == [17, 3]
    assert _token_ids(plain, [" Paris", "."]) == []
