"""``reasonlab serve`` with the official ``openai`` client on loopback, serving ``tiny``.

The server runs in a thread on a free port. Each answer is compared with the same search run
directly through the library, so a server that dropped the strategy, the budget or the token count
would fail here.
"""

from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

openai = pytest.importorskip("openai")

from reasonlab.policies import load_policy
from reasonlab.search import make_strategy
from reasonlab.serve import (
    AnswerReader,
    ServeConfig,
    ServeError,
    make_server,
    parse_model,
)
from reasonlab.tasks import load_task
from reasonlab.types import Example

PROMPT = "Q: 85+41-67+23=?\nA: "


@pytest.fixture(scope="module")
def served():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny is fastest on one thread, above all on a busy machine
    policy = load_policy("tiny", device="cpu")
    cfg = ServeConfig(model="tiny", task="arith", max_new_tokens=48, separator=r"\n", max_step_tokens=16,
                      max_steps=6, port=0)
    server = make_server(cfg, policy=policy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    yield client, policy, server
    server.shutdown()
    server.server_close()
    torch.set_num_threads(threads)


def ask(client, model="tiny", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], **kwargs)


def test_plain_request_is_the_greedy_answer(served):
    client, policy, _ = served
    r = ask(client)
    task = load_task("arith")
    direct = make_strategy("greedy", max_new_tokens=48).search(Example(id="x", prompt=PROMPT), policy,
                                                                AnswerReader(task))
    assert r.choices[0].message.content == direct.text and r.choices[0].message.role == "assistant"
    info = r.model_extra["reasonlab"]
    assert info["strategy"] == "greedy" and info["extracted"] == "82" == task.extract(direct.text)
    assert r.usage.completion_tokens == direct.compute.generated_tokens == info["compute"]["generated_tokens"]
    assert r.usage.prompt_tokens == direct.compute.prompt_tokens == len(PROMPT)  # one token per character
    assert r.object == "chat.completion" and r.model == "tiny"


def test_strategy_and_budget_by_extra_body_count_every_search_token(served):
    client, _, _ = served
    greedy = ask(client)
    r = ask(client, extra_body={"strategy": "sc", "budget": 240})
    info = r.model_extra["reasonlab"]
    assert info["strategy"] == "sc" and info["budget"] == 240
    assert info["compute"]["generations"] >= 5  # 240 tokens of 48-token samples, spent in full
    assert r.usage.completion_tokens == info["compute"]["generated_tokens"] <= 240
    assert r.usage.completion_tokens > 3 * greedy.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    seeded = [ask(client, extra_body={"strategy": "sc", "budget": 144}, seed=7).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seed makes equal requests give equal answers


def test_strategy_by_model_name(served):
    client, _, _ = served
    r = ask(client, model="tiny:beam@300", extra_body={"return_tree": True})
    info = r.model_extra["reasonlab"]
    assert (info["strategy"], info["budget"], info["scorer"]) == ("beam", 300, "confidence")
    assert r.model == "tiny:beam@300" and 0 < r.usage.completion_tokens <= 300
    assert len(info["tree"]["nodes"]) == info["tree_nodes"] > 3
    short = ask(client, model="sc-100").model_extra["reasonlab"]
    assert (short["strategy"], short["budget"], short["compute"]["generated_tokens"]) == ("sc", 100, 100)
    assert [m.id for m in client.models.list()][:3] == ["tiny", "tiny:greedy", "tiny:sc"]


@pytest.mark.parametrize("kwargs,status,text", [
    ({"extra_body": {"strategy": "nope"}}, 400, "unknown strategy 'nope'"),
    ({"model": "tiny:nope"}, 400, "unknown strategy 'nope'"),
    ({"extra_body": {"strategy": "beam", "scorer": "mc-rollout"}}, 400, "gold answer"),
    ({"extra_body": {"strategy": "sc", "options": {"bogus": 1}}}, 400, "bogus"),
    ({"model": "gpt-4"}, 404, "not served"),
])
def test_errors_are_openai_style(served, kwargs, status, text):
    client, _, _ = served
    kwargs = {"model": "tiny", **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, **kwargs)
    assert e.value.status_code == status
    err = e.value.response.json()["error"]
    assert text in err["message"] and err["type"] == "invalid_request_error" and err["code"]


def test_parse_model():
    assert parse_model("tiny", "tiny") == (None, None)
    assert parse_model("tiny:rebase@1024", "tiny") == ("rebase", 1024)
    assert parse_model("mcts-64", "tiny") == ("mcts", 64)
    assert parse_model("wmv", "tiny") == ("wmv", None)
    with pytest.raises(ServeError):
        parse_model("other:sc@5", "tiny")
