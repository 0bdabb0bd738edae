"""The llama.cpp backend: GGUF models, fast CPU inference, exact tokens and log-probs.

llama.cpp (through llama-cpp-python) runs the forward passes; the sampling loop is ours, in numpy, so
that what comes back is exactly what trainers need:

- ``token_ids``: every sampled token, including the end-of-generation token (e.g. ``<|im_end|>``)
  and the tokens that spelled a stop string. ``text`` is their detokenization with special tokens
  dropped and cut before the stop string; so ``detokenize(token_ids) == text`` unless a stop
  string ended the completion (vLLM's convention too).
- ``logprobs[t]``: the log-probability of ``token_ids[t]`` under the model's *unmodified*
  distribution, ``log_softmax(logits)[token]``, computed in float64 from the raw logits, before
  temperature, top-k or top-p (llama.cpp's own ``create_completion`` logprobs would need
  ``logits_all`` and a second pass). Tokens are then drawn from ``softmax(logits / T)`` restricted
  to the top-k tokens and then to the top-p nucleus, the order transformers and vLLM use.
- Greedy (``temperature == 0``) is the arg-max.

Prefix caching: the prompt is evaluated once and its KV cache is kept; each of the ``n`` samples
truncates the cache back to the prompt and decodes from the saved last-position logits, so a prompt
is never evaluated ``n`` times. Consecutive prompts reuse the KV cache of their common prefix (a
shared system prompt or few-shot block is evaluated once).

Seeds: sample ``j`` of prompt ``i`` draws from ``numpy.random.default_rng([seed, i, j])``, so the same
seed gives the same completions, and sample ``j`` does not depend on how many others were drawn.
Without a seed, a per-policy generator seeded with ``seed_default`` picks one per call: runs are
reproducible, while successive calls still differ.
"""

from __future__ import annotations

import codecs
import os
import threading
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy, find_stop
from reasonlab.types import Completion, Prompt, SamplingParams

#: Candidates examined before falling back to a full sort for top-p: the nucleus almost always lies
#: within the top few hundred tokens, and partitioning is O(vocab) where sorting is O(vocab log vocab).
_TOP_P_POOL = 512


def physical_cores() -> int:
    """Physical CPU cores available to this process (llama.cpp gains nothing from hyper-threads)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(physical, available))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log_softmax`` of a 1-D array, in float64."""
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def sample_token(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Draw one token id from ``softmax(logits / temperature)`` after top-k, then top-p, filtering.

    top-p keeps the smallest set of most likely tokens whose probability (under the tempered,
    top-k-restricted distribution) sums to at least ``top_p``.
    """
    z = logits.astype(np.float64) / temperature
    vocab = z.shape[0]
    cand = np.argpartition(z, -top_k)[-top_k:] if 0 < top_k < vocab else np.arange(vocab)
    if top_p < 1.0:
        zc = z[cand]
        m = zc.max()
        total = np.exp(zc - m).sum()
        pool_size = min(_TOP_P_POOL, cand.shape[0])
        while True:
            pool = np.argpartition(zc, -pool_size)[-pool_size:] if pool_size < cand.shape[0] else np.arange(cand.shape[0])
            pool = pool[np.argsort(-zc[pool], kind="stable")]
            cum = np.cumsum(np.exp(zc[pool] - m) / total)
            if cum[-1] >= top_p or pool_size == cand.shape[0]:
                keep = min(int(np.searchsorted(cum, top_p, side="left")) + 1, pool_size)
                cand = cand[pool[:keep]]
                break
            pool_size = cand.shape[0]  # rare: a flat distribution; sort everything
    zc = z[cand]
    p = np.exp(zc - zc.max())
    cum = np.cumsum(p)
    idx = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return int(cand[min(idx, cand.shape[0] - 1)])


class LlamaCppPolicy(Policy):
    """A GGUF model run by llama.cpp. ``generate`` is not re-entrant; calls are serialized by a lock.

    ``n_threads=None`` uses ``$REASONLAB_LLAMA_THREADS`` if set, else the physical cores. llama.cpp's
    worker threads spin while they wait for each other, so on a machine busy with other work fewer
    threads can be many times faster (measured on 2 busy cores: 1 thread 46 tok/s, 2 threads 19).
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 4096, n_threads: int | None = None,
                 seed_default: int = 0, name: str | None = None):
        import llama_cpp
        from llama_cpp import Llama

        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise UsageError(f"GGUF file {str(gguf_path)!r} does not exist")
        threads = n_threads or int(os.environ.get("REASONLAB_LLAMA_THREADS") or 0) or physical_cores()
        self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
        # Free the model before interpreter teardown: llama-cpp-python's own __del__ fails at exit.
        self._finalizer = weakref.finalize(self, self._llm.close)
        self.gguf_path = str(path)
        self.name = name or path.stem
        self.n_ctx = self._llm.n_ctx()
        self._vocab = self._llm.n_vocab()
        self._seeds = np.random.default_rng(seed_default)
        self._lock = threading.Lock()
        self._formatter = None
        self._is_eog = llama_cpp.llama_vocab_is_eog  # EOS, end-of-turn, ...: the GGUF's vocabulary says
        # The prompt whose KV cache (positions [0, len)) is valid, and its last-position logits.
        self._cached_prompt: list[int] = []
        self._cached_logits: np.ndarray | None = None

    # ---- prompts -----------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """Raw text as is; chat messages through the GGUF's own chat template (with the generation prompt)."""
        if isinstance(prompt, str):
            return prompt
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise UsageError(f"model {self.name!r} has no chat template in its GGUF; pass raw text prompts")
            model = self._llm._model
            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos >= 0 else "",
                bos_token=model.token_get_text(bos) if bos >= 0 else "",
                add_generation_prompt=True,
            )
        return self._formatter(messages=list(prompt)).prompt

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Prompt token ids, as transformers would produce them.

        Raw text gets the model's default special tokens (BOS where the model wants one); a rendered
        chat template already contains them. Special-token text (``<|im_start|>``) is parsed as such.
        """
        text = self.render(prompt)
        return self._llm.tokenize(text.encode("utf-8"), add_bos=isinstance(prompt, str), special=True)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` with special tokens dropped."""
        return self._llm.detokenize(list(token_ids)).decode("utf-8", errors="replace")

    # ---- KV cache ----------------------------------------------------------------------------

    def _last_logits(self) -> np.ndarray:
        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self._vocab,)).copy()

    def _truncate(self, n: int) -> bool:
        """Keep only the first ``n`` positions of the KV cache; False if the model cannot."""
        if not self._llm._ctx.kv_cache_seq_rm(-1, n, -1):
            return False
        self._llm.n_tokens = n
        return True

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Make the KV cache hold exactly ``ids`` and return the logits after its last token."""
        if self._cached_logits is not None and ids == self._cached_prompt and self._truncate(len(ids)):
            return self._cached_logits
        llm = self._llm
        limit = min(llm.n_tokens, len(ids) - 1)  # evaluate at least one token: we need its logits
        differ = np.nonzero(llm.input_ids[:limit] != np.asarray(ids[:limit]))[0]
        common = int(differ[0]) if differ.size else limit
        if common == 0 or not self._truncate(common):
            llm.reset()
            llm._ctx.kv_cache_clear()
        self._cached_prompt, self._cached_logits = [], None
        llm.eval(ids[llm.n_tokens:])
        self._cached_prompt, self._cached_logits = list(ids), self._last_logits()
        return self._cached_logits

    # ---- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Completion]:
        if isinstance(prompts, (str, dict)):
            raise UsageError("generate takes a list of prompts, not a single prompt")
        base_seed = sampling.seed if sampling.seed is not None else int(self._seeds.integers(2**63))
        base_seed &= 2**64 - 1  # SeedSequence wants non-negative entropy
        out: list[Completion] = []
        with self._lock:
            for i, prompt in enumerate(prompts):
                ids = self.tokenize(prompt)
                if not ids:
                    raise UsageError(f"prompt {i} is empty after tokenization")
                if len(ids) >= self.n_ctx:
                    raise UsageError(f"prompt {i} has {len(ids)} tokens; the context window is {self.n_ctx} (n_ctx)")
                logits = self._prefill(ids)
                for j in range(sampling.n):
                    rng = np.random.default_rng([base_seed, i, j])
                    out.append(self._decode(ids, logits, sampling, rng, i))
        return out

    def _decode(self, prompt_ids: list[int], logits: np.ndarray, sampling: SamplingParams,
                rng: np.random.Generator, prompt_index: int) -> Completion:
        """One completion of a prefilled prompt, token by token."""
        llm = self._llm
        n_prompt = len(prompt_ids)
        if llm.n_tokens != n_prompt and not self._truncate(n_prompt):
            raise RuntimeError("llama.cpp could not truncate its KV cache to the prompt")
        stops = sampling.stop
        longest_stop = max((len(s) for s in stops), default=0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        max_new = min(sampling.max_new_tokens, self.n_ctx - n_prompt)
        token_ids: list[int] = []
        logprobs: list[float] = []
        text, finish = "", "length"  # "length": max_new_tokens or the context window ran out
        for step in range(max_new):
            logp = log_softmax(logits)
            if sampling.greedy:
                tok = int(np.argmax(logits))
            else:
                tok = sample_token(logits, sampling.temperature, sampling.top_k, sampling.top_p, rng)
            token_ids.append(tok)
            logprobs.append(float(logp[tok]))
            if self._is_eog(llm._model.vocab, tok):
                finish = "stop"
                break
            before = len(text)
            text += decoder.decode(llm.detokenize([tok]))
            k = find_stop(text, stops, max(0, before - longest_stop + 1)) if stops else -1
            if k != -1:
                # The stop string is cut from the text; its tokens stay (they were sampled).
                return self._completion(text[:k], token_ids, logprobs, "stop", prompt_ids, prompt_index)
            if step + 1 < max_new:
                llm.eval([tok])
                logits = self._last_logits()
        text += decoder.decode(b"", final=True)  # a dangling partial UTF-8 character becomes U+FFFD
        return self._completion(text, token_ids, logprobs, finish, prompt_ids, prompt_index)

    @staticmethod
    def _completion(text: str, token_ids: list[int], logprobs: list[float], finish: str,
                    prompt_ids: list[int], prompt_index: int) -> Completion:
        return Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish,
                          prompt_tokens=len(prompt_ids), prompt_index=prompt_index, prompt_token_ids=list(prompt_ids))

    def close(self) -> None:
        self._finalizer()

