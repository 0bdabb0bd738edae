"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, RNG and data position.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/``::

    model/          the weights (see below)
    optimizer.pt    optimizer.state_dict()            (when an optimizer is given)
    scheduler.pt    scheduler.state_dict()            (when a scheduler is given)
    rng.pt          python `random`, numpy, torch CPU and (when present) CUDA generator states
    state.json      {"step", "data_state", "extra"}  written last: its presence marks completion

Weights. For a peft model only the adapter is saved (``adapter_model.safetensors`` +
``adapter_config.json``, as peft writes them): the frozen base weights are reloaded from the base
model when the run resumes, and a checkpoint of a 7B LoRA run stays a few MB. Any other module is
saved as its full ``state_dict`` with ``safetensors.torch.save_model`` (which also handles tied
weights) to ``model.safetensors``, next to ``config.json`` when the module has a Hugging Face
config — so the ``model/`` folder of a transformers model loads with ``from_pretrained`` too.

Atomicity. Everything is written into a temporary sibling directory which is renamed to
``step_<N>`` only when complete, so a crash mid-save leaves either the previous checkpoints or the
new one, never a half-written ``step_<N>``; :func:`latest_checkpoint` also skips any ``step_<N>``
lacking ``state.json``. All ``.pt`` files load with ``torch.load(weights_only=True)``: loading a
checkpoint runs no pickled code.

This module knows nothing about models or algorithms: it saves whatever torch objects it is handed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasonlab.errors import UsageError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STATE = "state.json"


# -- RNG ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global random generator's state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different GPU count: exact resume is impossible, say so rather than guess
            log.warning("checkpoint has CUDA RNG states for %d devices but %d are visible; CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())


# -- weights -----------------------------------------------------------------------------------


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter")


def _save_weights(model: torch.nn.Module, out: Path) -> None:
    out.mkdir(parents=True)
    if _is_peft(model):
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
        state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
        save_file(state, str(out / "adapter_model.safetensors"))
        model.peft_config[name].save_pretrained(str(out))
        return
    from safetensors.torch import save_model

    save_model(model, str(out / "model.safetensors"))
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "save_pretrained"):
        cfg.save_pretrained(str(out))


def _load_weights(model: torch.nn.Module, src: Path) -> None:
    device = next(model.parameters()).device
    if _is_peft(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        f = src / "adapter_model.safetensors"
        if not f.exists():
            raise UsageError(f"{src} holds no adapter weights, but the model to restore is a peft model")
        name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
        result = set_peft_model_state_dict(model, load_file(str(f), device=str(device)), adapter_name=name)
        if result.unexpected_keys:
            raise UsageError(f"{f} does not match the model: unexpected keys {result.unexpected_keys[:5]}")
        return
    from safetensors.torch import load_model

    f = src / "model.safetensors"
    if not f.exists():
        raise UsageError(f"{src} holds no model.safetensors (is this a LoRA checkpoint? then enable LoRA)")
    try:
        load_model(model, str(f), strict=True, device=str(device))
    except RuntimeError as e:
        raise UsageError(f"{f} does not match the model: {str(e).splitlines()[0]}") from e


# -- save / find / load ------------------------------------------------------------------------


def _step_dirs(run_dir: Path, complete_only: bool = True) -> list[tuple[int, Path]]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (not complete_only or (p / _STATE).is_file()):
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(run_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer: Any = None,
                    scheduler: Any = None, data_state: dict[str, Any], extra: dict[str, Any] | None = None,
                    keep_last: int = 2, modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>/`` atomically, then keep only the newest ``keep_last``
    complete checkpoints (``keep_last <= 0`` keeps all). ``data_state`` and ``extra`` must be
    JSON-serialisable. ``modules`` are further trained modules outside ``model`` (e.g. a PPO value
    head), saved as ``<name>.pt``. Returns the checkpoint's path."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-save; only one process writes a run dir
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}-{os.getpid()}"
    try:
        tmp.mkdir()
        _save_weights(model, tmp / "model")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        for name, module in (modules or {}).items():
            torch.save(module.state_dict(), tmp / f"{name}.pt")
        state = {"step": int(step), "data_state": data_state, "extra": extra or {}}
        with open(tmp / _STATE, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # saving the same step again (e.g. interrupted right after a periodic save)
            old = root / f".tmp-old-step_{step}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # make the rename durable
        fd = os.open(root, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass
    if keep_last > 0:
        for _, p in _step_dirs(Path(run_dir))[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``run_dir/checkpoints``, or None."""
    found = _step_dirs(Path(run_dir))
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: Any = None,
                    scheduler: Any = None, modules: dict[str, torch.nn.Module] | None = None
                    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer, scheduler and all RNG states from a checkpoint directory.

    Returns ``(step, data_state, extra)``. The model, optimizer and scheduler must be built the
    same way as when the checkpoint was saved; their states are loaded in place.
    """
    path = Path(path)
    if not (path / _STATE).is_file():
        raise UsageError(f"{path} is not a complete checkpoint (no {_STATE})")
    state = json.loads((path / _STATE).read_text(encoding="utf-8"))
    _load_weights(model, path / "model")
    if optimizer is not None:
        if not (path / "optimizer.pt").exists():
            raise UsageError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        if not (path / "scheduler.pt").exists():
            raise UsageError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    for name, module in (modules or {}).items():
        if not (path / f"{name}.pt").exists():
            raise UsageError(f"{path} holds no {name} state")
        module.load_state_dict(torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return int(state["step"]), state.get("data_state") or {}, state.get("extra") or {}
