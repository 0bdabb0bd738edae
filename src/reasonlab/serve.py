"""``reasonlab serve``: an OpenAI-compatible chat server that answers with a search strategy.

Any OpenAI client can ask a reasonlab policy (any backend) for an answer found by test-time search::

    reasonlab serve --model tiny --task arith --max-new-tokens 48 --separator '\\n' --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="tiny", messages=[...])                      # server default
    client.chat.completions.create(model="tiny:sc@512", messages=[...])               # by model name
    client.chat.completions.create(model="sc-512", messages=[...])                    # short form
    client.chat.completions.create(model="tiny", messages=[...],
                                   extra_body={"strategy": "beam", "budget": 1024,
                                               "scorer": "confidence", "options": {"width": 2}})

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

**Choosing the search.** The strategy and budget come from the request's extra fields (``strategy``,
``budget``, ``scorer``, ``options``: a mapping of strategy options), else from the model name
(``<model>:<strategy>[@<budget>]`` or ``<strategy>[-<budget>]``), else from the server's
``--strategy``/``--budget``. The standard fields ``temperature``, ``top_p``, ``seed`` and
``max_tokens`` (the longest single sample, not the total) become strategy options where the strategy
has them; ``budget`` caps the total generated tokens of the whole search. ``n`` must be 1 and
streaming is not offered.

**The answer.** The assistant message is the chosen solution's text. ``usage.completion_tokens``
counts *every* token the search generated (all samples, steps and rollouts) and
``usage.prompt_tokens`` every prompt it prefilled, so a client's cost accounting sees the search's
real cost. A ``reasonlab`` field adds the extracted answer, the strategy, budget, scorer and the
full compute record (and the search tree with ``"return_tree": true``).

**Prompts.** The messages are rendered with the model's chat template. A raw-text model without one
(``tiny``) gets the *content of the last user message* as its raw prompt, e.g. ``"Q: 37+45=?\\nA: "``.

**No gold answer.** A served request has no gold answer, so scorers that judge against it
(``mc-rollout``, ``verifier-oracle``) are refused with HTTP 400. Answers are read (for votes and the
``reasonlab.extracted`` field) with ``--task``'s extraction when given (``arith`` for ``tiny``), else
with the generic reader (``<answer>`` tags, ``\\boxed{}``, "the answer is", the last number).

The server is the standard library's ``ThreadingHTTPServer``: no extra dependency. Requests are
read concurrently, but searches run one at a time (a policy is not thread-safe), in arrival order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reasonlab import config as config_lib
from reasonlab.errors import BackendError, UsageError
from reasonlab.tasks.base import Task
from reasonlab.types import Example, RewardResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Serve a policy over an OpenAI-compatible /v1/chat/completions API, answering with a search strategy."""

    model: str = "smollm2"
    """Model: a built-in name (smollm2, tiny), a local checkpoint dir or .gguf file, or openai:<url>[#model]."""
    backend: str = "auto"
    """Policy backend: auto, hf (transformers), llamacpp, openai."""
    task: str = ""
    """Task whose answer extraction and stop strings to use (e.g. arith for tiny); empty: generic answer reading."""
    task_options: str = ""
    """Options of --task as YAML/JSON."""
    strategy: str = "greedy"
    """Default strategy when a request names none: greedy, sc, bon, wmv, beam, rebase, mcts, revise."""
    budget: int | None = None
    """Default budget in generated tokens per request (none: uncapped)."""
    scorer: str = "confidence"
    """Default scorer of strategies that need one: confidence, self-eval, agreement, rm:PATH (not gold-based ones)."""
    scorer_options: str = ""
    """Scorer options as YAML, by scorer name, e.g. '{self-eval: {yes: " yes", no: " no"}}'."""
    options: str = ""
    """Default strategy options as YAML, by strategy or strategy@budget, e.g. '{sc: {n: 8}, beam: {width: 2}}'."""
    max_new_tokens: int = 512
    """Longest single sample in tokens (a request's max_tokens overrides it)."""
    separator: str = "\n\n"
    """Step separator of step-level searches (the escapes \\n, \\t are read)."""
    max_step_tokens: int = 128
    """Longest step in tokens (beam, rebase, mcts)."""
    max_steps: int = 16
    """Deepest solution in steps (beam, rebase, mcts)."""
    temperature: float = 0.8
    """Sampling temperature of strategies that sample (a request's temperature overrides it)."""
    seed: int = 0
    """Search seed (a request's seed overrides it and makes equal requests give equal answers)."""
    spend_budget: bool = True
    """With a budget, sc, bon and wmv sample until it is spent (n=0) unless the options set n."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface)."""
    port: int = 8000
    """Port to listen on (0: any free port)."""
    api_key: str = ""
    """If set, requests must send 'Authorization: Bearer <api_key>'."""
    device: str = "auto"
    """Device for the transformers backend: auto, cpu, cuda."""
    dtype: str = "auto"
    """Weights dtype for the transformers backend: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16,
    float16. bfloat16 pays on a CPU with bf16 units (AVX512-BF16, AMX); it changes the model's numbers a little."""
    threads: int | None = None
    """torch CPU threads (none: torch's default)."""

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 (or none), got {self.budget}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


class ServeError(Exception):
    """A request the server refuses: becomes an OpenAI-style error body with this HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------
# Reading answers without a gold answer
# ----------------------------------------------------------------------------------------------

class AnswerReader(Task):
    """A task for served requests: reads answers, judges nothing (there is no gold answer).

    ``score`` returns the extracted answer with status ``error`` ("not checked"): strategies use only
    ``extracted``, and a scorer that would need a verdict is refused before it runs. Extraction and
    vote keys come from ``task`` when given (its ``extract`` if it has one, as ``arith`` does), else
    from the generic reader in :mod:`reasonlab.rewards.extract` and math answer keys.
    """

    name = "answers"

    def __init__(self, task: Task | None = None):
        self.task = task
        self.stop = tuple(task.stop) if task is not None else ()

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        raise UsageError("a served request has no task examples")

    def extract(self, completion: str) -> str | None:
        own = getattr(self.task, "extract", None)
        if callable(own):
            return own(completion)
        from reasonlab.rewards.extract import extract_answer

        return extract_answer(completion)

    def score(self, example: Example, completion: str) -> RewardResult:
        got = self.extract(completion)
        if got is None:
            return RewardResult.unparsable("no answer found")
        return RewardResult.error("no gold answer: the answer was read, not checked", extracted=got)

    def answer_key(self, extracted: str | None) -> Hashable | None:
        if self.task is not None:
            return self.task.answer_key(extracted)
        from reasonlab.rewards.math import answer_key

        return answer_key(extracted)

    def close(self) -> None:
        if self.task is not None:
            self.task.close()


# ----------------------------------------------------------------------------------------------
# The service: a chat request in, a search, a chat completion out (no HTTP here)
# ----------------------------------------------------------------------------------------------

_SPEC = re.compile(r"([A-Za-z_]+)(?:[@-](\d+))?")


def parse_model(model: str, served: str) -> tuple[str | None, int | None]:
    """Strategy and budget a model name asks for: ``tiny`` -> (None, None), ``tiny:sc@512`` and
    ``sc-512`` -> ("sc", 512), ``sc`` -> ("sc", None). Raises :class:`ServeError` for other names."""
    from reasonlab.search import STRATEGIES

    if not model or model == served:
        return None, None
    prefix, colon, spec = model.rpartition(":")
    if colon and prefix != served:
        raise ServeError(404, f"model {model!r} is not served here; this server serves {served!r} "
                              f"(as {served!r}, '{served}:<strategy>[@<budget>]' or '<strategy>-<budget>')",
                         param="model", code="model_not_found")
    m = _SPEC.fullmatch(spec if colon else model)
    if m is None or m.group(1) not in STRATEGIES:
        name = m.group(1) if m else spec
        if colon:
            raise ServeError(400, f"unknown strategy {name!r} in model {model!r}; choose one of "
                                  f"{', '.join(STRATEGIES)}", param="model", code="unknown_strategy")
        raise ServeError(404, f"model {model!r} is not served here; this server serves {served!r} "
                              f"(or '<strategy>-<budget>' with a strategy among {', '.join(STRATEGIES)})",
                         param="model", code="model_not_found")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _content_text(content: Any) -> str:
    """A message's content as text (OpenAI allows a list of parts; only text parts are read)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ServeError(400, "message content must be a string or a list of text parts", param="messages")


class SearchService:
    """Answers chat requests with a search over ``policy``; ``answers`` reads answers (an :class:`AnswerReader`)."""

    def __init__(self, cfg: ServeConfig, policy, answers: AnswerReader):
        from reasonlab.search.runner import _yaml_mapping

        self.cfg, self.policy, self.answers = cfg, policy, answers
        self.name = policy.name
        self.options = _yaml_mapping(cfg.options, "--options")
        self.scorer_options = _yaml_mapping(cfg.scorer_options, "--scorer-options")
        self._scorers: dict[str, Any] = {}
        self._lock = threading.Lock()  # one search at a time: policies are not thread-safe
        self.chat = self._renders_chat()
        # Fail at start-up, not on the first request, if the defaults cannot work.
        try:
            self.build_search({}, None, None)
        except ServeError as e:
            raise UsageError(f"server defaults: {e.message}") from e

    def _renders_chat(self) -> bool:
        try:
            self.policy.render([{"role": "user", "content": "hi"}])
        except (UsageError, NotImplementedError):
            return False
        return True

    def models(self) -> dict[str, Any]:
        from reasonlab.search import STRATEGIES

        ids = [self.name] + [f"{self.name}:{s}" for s in STRATEGIES]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "reasonlab"}
                                           for i in ids]}

    # -- building the search ----------------------------------------------------------------------
    def scorer(self, spec: str):
        from reasonlab.search import make_scorer
        from reasonlab.search.runner import GOLD_SCORERS

        name = spec.partition(":")[0]
        if name in GOLD_SCORERS:
            raise ServeError(400, f"scorer {spec!r} judges against the gold answer, which a served request does "
                                  "not have; use confidence, self-eval, agreement or rm:PATH", param="scorer",
                             code="scorer_needs_gold")
        if spec not in self._scorers:
            try:
                opts = self.scorer_options.get(spec, self.scorer_options.get(name, {}))
                self._scorers[spec] = make_scorer(spec, **opts)
            except UsageError as e:
                raise ServeError(400, str(e), param="scorer", code="invalid_scorer") from e
        return self._scorers[spec]

    def build_search(self, body: dict[str, Any], name: str | None, budget: int | None):
        """(strategy, scorer or None, budget) for a request; ``name``/``budget`` come from the model name."""
        from reasonlab.search import STRATEGIES, make_strategy
        from reasonlab.search.runner import strategy_options

        name = body.get("strategy") or name or self.cfg.strategy
        if not isinstance(name, str) or name not in STRATEGIES:
            raise ServeError(400, f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}",
                             param="strategy", code="unknown_strategy")
        if "budget" in body:
            budget = body["budget"]
        elif budget is None:
            budget = self.cfg.budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ServeError(400, f"budget must be a positive number of generated tokens, got {budget!r}",
                             param="budget")
        opts = strategy_options(self.cfg, name, budget, self.options)
        known = set(STRATEGIES[name].Config.__dataclass_fields__)
        for field, key in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                           ("max_tokens", "max_new_tokens"), ("max_completion_tokens", "max_new_tokens")):
            if body.get(field) is not None and key in known:
                opts[key] = body[field]
        extra = body.get("options") or {}
        if not isinstance(extra, dict):
            raise ServeError(400, "options must be a mapping of strategy options", param="options")
        opts.update(extra)
        try:
            strategy = make_strategy(name, **opts)
        except UsageError as e:
            raise ServeError(400, str(e), param="options", code="invalid_options") from e
        scorer = None
        if strategy.needs_scorer():
            spec = body.get("scorer") or self.cfg.scorer
            if not isinstance(spec, str):
                raise ServeError(400, f"scorer must be a name, got {spec!r}", param="scorer")
            scorer = self.scorer(spec)
        return strategy, scorer, budget

    def prompt(self, messages: Any):
        """The prompt for the policy: the messages (chat models) or the last user message's text (raw models)."""
        if not isinstance(messages, list) or not messages:
            raise ServeError(400, "messages must be a non-empty list", param="messages")
        clean = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ServeError(400, "each message needs a role and a content", param="messages")
            clean.append({"role": m["role"], "content": _content_text(m.get("content", ""))})
        users = [m["content"] for m in clean if m["role"] == "user"]
        if self.chat:
            return clean, users[-1] if users else ""
        if not users:
            raise ServeError(400, f"model {self.name!r} has no chat template: send the raw prompt as a user "
                                  "message", param="messages")
        return users[-1], users[-1]

    # -- answering ----------------------------------------------------------------------------
    def complete(self, body: Any) -> dict[str, Any]:
        """The chat completion for a request body (a dict); raises :class:`ServeError` for bad requests."""
        if not isinstance(body, dict):
            raise ServeError(400, "the request body must be a JSON object")
        if body.get("stream"):
            raise ServeError(400, "streaming is not supported: a search answers once, at the end", param="stream")
        if body.get("n") not in (None, 1):
            raise ServeError(400, "n must be 1: the search itself decides how many samples to draw", param="n")
        model = body.get("model") or self.name
        if not isinstance(model, str):
            raise ServeError(400, "model must be a string", param="model")
        name, budget = parse_model(model, self.name)
        strategy, scorer, budget = self.build_search(body, name, budget)
        prompt, question = self.prompt(body.get("messages"))
        if body.get("seed") is not None:  # equal requests with a seed give equal answers
            ex_id = "chat-" + hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]
        else:
            ex_id = f"chat-{uuid.uuid4().hex}"
        example = Example(id=ex_id, prompt=prompt, answer=None, question=question)
        with self._lock:
            result = strategy.search(example, self.policy, self.answers, scorer, budget=budget)
        chosen = result.tree.chosen_path()
        end = result.tree[chosen[-1]].meta.get("end") if chosen else None
        info: dict[str, Any] = {"strategy": strategy.name, "budget": budget, "scorer": result.scorer,
                                "extracted": result.extracted, "compute": result.compute.to_dict(),
                                "tree_nodes": len(result.tree)}
        if body.get("return_tree"):
            info["tree"] = result.tree.to_dict()
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": "length" if end in ("length", "max_steps") else "stop",
                         "logprobs": None}],
            "usage": result.usage,
            "reasonlab": info,
        }


# ----------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    protocol_version = "HTTP/1.1"
    server_version = "reasonlab"

    def _send(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, allow_nan=False, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: ServeError) -> None:
        self._send(e.status, e.body())

    def _authorized(self) -> bool:
        key = self.server.service.cfg.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            self._error(ServeError(401, "invalid or missing API key", code="invalid_api_key",
                                   type="authentication_error"))
            return False
        return True

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            return self._send(200, {"status": "ok"})
        if not self._authorized():
            return None
        if path == "/v1/models":
            return self._send(200, self.server.service.models())
        self._error(ServeError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self._authorized():
            return None
        if path != "/v1/chat/completions":
            return self._error(ServeError(404, f"no route POST {path}; use /v1/chat/completions", code="not_found"))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            return self._error(ServeError(400, f"the request body is not valid JSON: {e.msg}"))
        try:
            self._send(200, self.server.service.complete(body))
        except ServeError as e:
            self._error(e)
        except UsageError as e:  # e.g. a scorer the backend cannot serve (no log-probs)
            self._error(ServeError(400, str(e)))
        except BackendError as e:
            self._error(ServeError(502, f"backend error: {e}", type="server_error", code="backend_error"))
        except Exception as e:  # a bug: say so in the body, keep the traceback in the log
            log.exception("request failed")
            self._error(ServeError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s - %s", self.address_string(), format % args)


class SearchServer(ThreadingHTTPServer):
    """The HTTP server; ``service`` answers the requests. ``url`` is its ``/v1`` base URL."""

    daemon_threads = True

    def __init__(self, service: SearchService, host: str, port: int):
        super().__init__((host, port), _Handler)
        self.service = service

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def load_answers(cfg: ServeConfig) -> AnswerReader:
    if not cfg.task:
        return AnswerReader(None)
    from reasonlab.evaluation.harness import task_options
    from reasonlab.tasks import load_task

    return AnswerReader(load_task(cfg.task, **task_options(cfg)))


def _check_names(cfg: ServeConfig) -> None:
    from reasonlab.search import STRATEGIES
    from reasonlab.search.runner import GOLD_SCORERS
    from reasonlab.search.scorers import SCORERS

    if cfg.strategy not in STRATEGIES:
        raise UsageError(f"unknown search strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    name = cfg.scorer.partition(":")[0]
    if name not in SCORERS:
        raise UsageError(f"unknown scorer {cfg.scorer!r}; choose one of {', '.join(SCORERS)}")
    if name in GOLD_SCORERS:
        raise UsageError(f"scorer {cfg.scorer!r} judges against the gold answer, which served requests do not have")


def make_server(cfg: ServeConfig, *, policy=None, answers: AnswerReader | None = None) -> SearchServer:
    """A server ready for ``serve_forever()`` (bound already: with port 0, ``server.url`` has the port)."""
    _check_names(cfg)  # before the model loads: a typo fails in a second
    if policy is None:
        from reasonlab.policies import hf_options, load_policy

        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        policy = load_policy(cfg.model, cfg.backend, **hf_options(cfg.device, cfg.dtype))
    service = SearchService(cfg, policy, answers if answers is not None else load_answers(cfg))
    try:
        return SearchServer(service, cfg.host, cfg.port)
    except OSError as e:
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from e


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_lib.parse(ServeConfig, list(argv) if argv is not None else None, prog="reasonlab serve")
    logging.getLogger(__name__).setLevel(logging.INFO)
    server = make_server(cfg)
    budget = cfg.budget if cfg.budget is not None else "no budget"
    print(f"reasonlab serving {server.service.name} at {server.url} (default: {cfg.strategy}, {budget}); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.service.answers.close()
        server.service.policy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
