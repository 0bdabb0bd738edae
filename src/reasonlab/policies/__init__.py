"""Policies: one ``generate`` interface (``base.Policy``), several backends, one loader.

``load_policy(model, backend)`` turns a model name (see ``models.resolve_model``) into a policy:

- ``llamacpp`` (``llamacpp.LlamaCppPolicy``): GGUF files, fast CPU inference. ``auto`` picks it for
  ``.gguf`` files and for the built-in ``smollm2``.
- ``hf`` (``hf.HFPolicy``): transformers checkpoints, CPU or GPU, trainable. ``auto`` picks it for
  checkpoint directories, ``tiny`` and cached hub ids. Trainers ask for ``backend="hf"`` explicitly,
  also for ``smollm2`` (whose transformers checkpoint is converted from the GGUF on first use).
- ``openai`` (``openai_api.OpenAIPolicy``): any OpenAI-compatible server, for ``openai:<url>[#model]``.

Backend-specific options (``n_ctx``, ``device``, ``timeout``, ...) pass through ``**options``.
Backends are imported only when used, so importing this package loads neither torch nor llama.cpp.
"""

from __future__ import annotations

import inspect
from typing import Any

from reasonlab.errors import UsageError
from reasonlab.policies.base import Policy, find_stop
from reasonlab.policies.models import BUILTIN_MODELS, ModelSpec, resolve_model

BACKENDS = ("auto", "hf", "llamacpp", "openai")

__all__ = ["BACKENDS", "BUILTIN_MODELS", "ModelSpec", "Policy", "find_stop", "load_policy", "resolve_model"]


def _backend_class(backend: str) -> type[Policy]:
    if backend == "llamacpp":
        from reasonlab.policies.llamacpp import LlamaCppPolicy

        return LlamaCppPolicy
    if backend == "openai":
        from reasonlab.policies.openai_api import OpenAIPolicy

        return OpenAIPolicy
    from reasonlab.policies.hf import HFPolicy

    return HFPolicy


def _check_options(backend: str, cls: type, options: dict[str, Any], positional: int) -> None:
    """Unknown options are a user's slip (e.g. ``device`` for llama.cpp): name them in one line."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1 + positional:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"backend {backend!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(known)} (--backend picks another: {', '.join(BACKENDS)})")


def pick_backend(spec: ModelSpec, backend: str = "auto") -> str:
    """The backend ``load_policy`` uses for ``spec`` (``auto`` resolved), or UsageError if it cannot."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "openai" if spec.is_openai else "llamacpp" if spec.gguf_path else "hf"
    if spec.is_openai and backend != "openai":
        raise UsageError(f"model {spec.name!r} is an OpenAI-compatible server; it needs backend 'openai'")
    if backend == "openai" and not spec.is_openai:
        raise UsageError(f"backend 'openai' needs a model written openai:<base_url>[#<model>], got {spec.name!r}")
    if backend == "llamacpp" and spec.gguf_path is None:
        raise UsageError(f"backend 'llamacpp' needs a GGUF file; model {spec.name!r} is a transformers checkpoint")
    if backend == "hf" and spec.hf_path is None and spec.name != "smollm2":
        raise UsageError(f"backend 'hf' needs a transformers checkpoint directory; {spec.gguf_path} is a GGUF file "
                         "(use backend 'llamacpp')")
    return backend


def hf_options(device: str = "auto", dtype: str = "auto") -> dict[str, str]:
    """The transformers backend's ``device`` / ``dtype`` settings of a command, without those left on auto (so that
    another backend, which has neither option, is not handed them)."""
    return {k: v for k, v in (("device", device), ("dtype", dtype)) if v != "auto"}


def load_policy(model: str = "smollm2", backend: str = "auto", **options: Any) -> Policy:
    """Load ``model`` (a name, path or ``openai:`` URL) with ``backend``; ``options`` go to the backend."""
    spec = resolve_model(model)
    backend = pick_backend(spec, backend)
    cls = _backend_class(backend)
    options.setdefault("name", spec.name)
    if backend == "openai":
        _check_options(backend, cls, options, positional=2)
        return cls(spec.base_url, spec.model_id, **options)
    _check_options(backend, cls, options, positional=1)
    if backend == "llamacpp":
        return cls(spec.gguf_path, **options)
    return cls(spec.hf_checkpoint(), **options)  # converts the built-in smollm2 on first use
