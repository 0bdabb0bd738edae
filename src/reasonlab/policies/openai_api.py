"""The OpenAI-compatible backend: any server that speaks ``/v1/completions`` and ``/v1/chat/completions``.

vLLM, SGLang, llama.cpp's ``llama-server``, ``python -m llama_cpp.server``, TGI and OpenAI itself all
qualify. Raw-text prompts go to the completions endpoint (the text is used as it is); chat messages
go to the chat endpoint, where the *server* applies its chat template.

What comes back, and its limits:

- ``text``, ``finish_reason`` (``"length"`` stays ``"length"``, anything else becomes ``"stop"``) and
  ``prompt_tokens`` (from ``usage``; 0 if the server sends no usage).
- ``logprobs``: the sampled tokens' log-probabilities as the server reports them (vLLM reports the
  model's raw distribution by default; other servers may report post-temperature values); ``None``
  when the server returns none.
- ``token_ids``: taken from the choice's ``token_ids`` field when the server sends one (vLLM does
  with ``return_token_ids=True``), else parsed from logprob tokens written as ``token_id:<id>``
  (vLLM's ``return_tokens_as_token_ids``); otherwise **empty**: the OpenAI protocol only returns
  token strings, which cannot be mapped back to ids exactly. Trainers need token ids, so they use
  a local backend; this one is for evaluation and search.
- Sampling knobs the OpenAI protocol lacks (``top_k``) travel in ``extra_body``; server-side defaults
  for others (llama.cpp's min-p and repetition penalty) stay the server's unless ``extra_body`` sets
  them.

Servers that ignore ``n`` (llama-cpp-python does) are topped up with further requests, each with its
own seed derived from ``(seed, prompt index, request index)``. Requests for different prompts run
concurrently on a thread pool. Connection failures and 5xx answers are retried with exponential
backoff by the ``openai`` client; when they persist, :class:`~reasonlab.errors.BackendError` says so
in one line.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from reasonlab.errors import BackendError, UsageError
from reasonlab.policies.base import Policy
from reasonlab.types import Completion, Prompt, SamplingParams

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


def derive_seed(seed: int, prompt_index: int, request_index: int) -> int:
    """A 31-bit seed for one request (some servers keep seeds in an int32)."""
    state = np.random.SeedSequence([seed & (2**64 - 1), prompt_index, request_index]).generate_state(1)
    return int(state[0]) & 0x7FFFFFFF


class OpenAIPolicy(Policy):
    """A model behind an OpenAI-compatible HTTP server."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str = "EMPTY", timeout: float = 60.0,
                 max_retries: int = 3, name: str | None = None, concurrency: int = 8,
                 extra_body: dict[str, Any] | None = None, return_token_ids: bool = False, logprobs: bool = True):
        """``model=None`` asks the server (``/v1/models``) and uses the first model it lists.

        ``concurrency``: requests in flight at once. ``extra_body``: extra JSON fields sent with every
        request (server-specific sampling settings). ``return_token_ids``: ask vLLM for token ids.
        ``logprobs``: ask for the sampled tokens' log-probabilities (turn off for servers that refuse).
        """
        from openai import OpenAI

        if concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model or "openai"
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.return_token_ids = return_token_ids
        self.logprobs = logprobs
        self._client = OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    # ---- errors ------------------------------------------------------------------------------

    def _call(self, fn, **kwargs: Any) -> Any:
        """Run one client call, turning transport and server failures into one-line errors."""
        import openai

        try:
            return fn(**kwargs)
        except openai.APIConnectionError as e:  # includes timeouts; raised after the client's retries
            reason = str(e.__cause__ or e) or type(e).__name__
            raise BackendError(f"cannot reach OpenAI-compatible server at {self.base_url}: {reason}") from None
        except openai.APIStatusError as e:
            detail = _one_line(e.message)
            if e.status_code >= 500 or e.status_code in (408, 409, 429):
                raise BackendError(
                    f"OpenAI-compatible server at {self.base_url} failed with HTTP {e.status_code}: {detail}"
                ) from None
            raise UsageError(
                f"OpenAI-compatible server at {self.base_url} rejected the request (HTTP {e.status_code}): {detail}"
            ) from None

    def _model_id(self) -> str:
        if self.model is None:
            models = self._call(self._client.models.list)
            ids = [m.id for m in models.data]
            if not ids:
                raise BackendError(f"OpenAI-compatible server at {self.base_url} lists no models")
            self.model = ids[0]
        return self.model

    # ---- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Completion]:
        if isinstance(prompts, (str, dict)):
            raise UsageError("generate takes a list of prompts, not a single prompt")
        model = self._model_id()
        if len(prompts) <= 1 or self.concurrency == 1:
            groups = [self._generate_one(model, p, i, sampling) for i, p in enumerate(prompts)]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
                futures = [pool.submit(self._generate_one, model, p, i, sampling) for i, p in enumerate(prompts)]
                groups = [f.result() for f in futures]  # in prompt order: the output is prompt-major
        return [c for group in groups for c in group]

    def _request_args(self, sampling: SamplingParams, n: int, seed: int | None) -> dict[str, Any]:
        args: dict[str, Any] = {"n": n, "temperature": sampling.temperature, "max_tokens": sampling.max_new_tokens}
        if not sampling.greedy:
            args["top_p"] = sampling.top_p
        if sampling.stop:
            args["stop"] = list(sampling.stop)
        if seed is not None:
            args["seed"] = seed
        extra = dict(self.extra_body)
        if sampling.top_k > 0 and not sampling.greedy:
            extra["top_k"] = sampling.top_k  # not in the OpenAI protocol; vLLM and llama.cpp read it
        if self.return_token_ids:
            extra["return_token_ids"] = True
        if extra:
            args["extra_body"] = extra
        return args

    def _generate_one(self, model: str, prompt: Prompt, index: int, sampling: SamplingParams) -> list[Completion]:
        chat = not isinstance(prompt, str)
        out: list[Completion] = []
        request = 0
        while len(out) < sampling.n:
            want = sampling.n - len(out)
            seed = None if sampling.seed is None else derive_seed(sampling.seed, index, request)
            args = self._request_args(sampling, want, seed)
            if chat:
                if self.logprobs:
                    args.update(logprobs=True, top_logprobs=1)  # top_logprobs: llama.cpp sends none without it
                resp = self._call(self._client.chat.completions.create, model=model, messages=list(prompt), **args)
            else:
                if self.logprobs:
                    args["logprobs"] = 1
                resp = self._call(self._client.completions.create, model=model, prompt=prompt, **args)
            if not resp.choices:
                raise BackendError(f"OpenAI-compatible server at {self.base_url} returned no choices")
            prompt_tokens = resp.usage.prompt_tokens if resp.usage is not None else 0
            for choice in sorted(resp.choices, key=lambda c: c.index)[:want]:
                out.append(_chat_completion(choice, index, prompt_tokens) if chat
                           else _text_completion(choice, index, prompt_tokens))
            request += 1
        return out

    def close(self) -> None:
        self._client.close()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _extra(obj: Any, key: str) -> Any:
    """A field the server added beyond the OpenAI schema (e.g. vLLM's ``token_ids``)."""
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get(key, getattr(obj, key, None))


def _token_ids(choice: Any, tokens: list[str] | None) -> list[int]:
    ids = _extra(choice, "token_ids")
    if ids:
        return [int(t) for t in ids]
    if tokens:
        matches = [_TOKEN_ID.match(t or "") for t in tokens]
        if all(matches):
            return [int(m.group(1)) for m in matches]  # type: ignore[union-attr]
    return []


def _text_completion(choice: Any, index: int, prompt_tokens: int) -> Completion:
    lp = choice.logprobs
    tokens = list(lp.tokens) if lp is not None and lp.tokens is not None else None
    logprobs = [float(x) for x in lp.token_logprobs] if lp is not None and lp.token_logprobs is not None else None
    return Completion(text=choice.text or "", token_ids=_token_ids(choice, tokens), logprobs=logprobs,
                      finish_reason=_finish(choice.finish_reason), prompt_tokens=prompt_tokens, prompt_index=index,
                      num_tokens=len(logprobs) if logprobs is not None else None)


def _chat_completion(choice: Any, index: int, prompt_tokens: int) -> Completion:
    content = choice.logprobs.content if choice.logprobs is not None else None
    tokens = [c.token for c in content] if content else None
    logprobs = [float(c.logprob) for c in content] if content else None
    return Completion(text=choice.message.content or "", token_ids=_token_ids(choice, tokens), logprobs=logprobs,
                      finish_reason=_finish(choice.finish_reason), prompt_tokens=prompt_tokens, prompt_index=index,
                      num_tokens=len(logprobs) if logprobs is not None else None)
