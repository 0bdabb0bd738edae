"""The C decode-attention kernel (``kernels/decode_attention.c``): compiled once per machine, called by ctypes.

Decode attention on a CPU is bound by reading the KV cache, and PyTorch's batched matmuls of 3 query
rows against a cached key block read it at about a third of the bandwidth a plain read gets. The kernel
reads each key and value once for every query that needs it and skips prompt padding; see its source.

It is plain C with no PyTorch headers, so it compiles in well under a second with the system's C
compiler (``$CC``, else ``cc``/``gcc``) into ``$REASONLAB_CACHE/kernels`` and is reused from there. The
file name holds a hash of the source, the compiler and the CPU's flags, since ``-march=native`` code
must not run on another CPU model sharing the cache. With no compiler, a failed build, or
``REASONLAB_DECODE_KERNEL=0``, :func:`load` returns ``None`` and the sampler keeps its PyTorch attention
(same results up to float rounding, slower).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "decode_attention.c"
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
ENV_SWITCH = "REASONLAB_DECODE_KERNEL"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        # -lm after the source: the vectorized expf comes from glibc's libmvec, which libm pulls in.
        proc = subprocess.run([cc, *FLAGS, "-o", str(built), str(SOURCE), "-lm"], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(built, out)   # atomic: a concurrent process sees the whole library or none


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or ``None`` when it is switched off or cannot be built here."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        log.info("no C compiler found: decode attention stays in PyTorch")
        return None
    from reasonlab.policies.models import cache_dir

    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), cc.encode(), " ".join(FLAGS + ("-lm",)).encode(),
                                      platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    lib_path = cache_dir() / "kernels" / f"decode_attention-{key}.so"
    try:
        if not lib_path.exists():
            _compile(cc, lib_path)
        lib = ctypes.CDLL(str(lib_path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("decode-attention kernel unavailable (%s): decode attention stays in PyTorch", exc)
        return None
    fn = lib.decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 7 + [ctypes.c_int]
    return lib


def available() -> bool:
    return load() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Can the kernel read these tensors as they are (contiguous float32 on the CPU)?"""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def decode_attention(q: torch.Tensor, prompt_keys: torch.Tensor, prompt_values: torch.Tensor, keep: torch.Tensor,
                     gen_keys: torch.Tensor, gen_values: torch.Tensor, starts: torch.Tensor, t: int,
                     threads: int | None = None) -> torch.Tensor:
    """One decode step's attention; the caller checks :func:`available` and :func:`usable` first.

    Shapes: ``q (B, H, G, D)`` (scaled), ``prompt_keys/values (U, H, P, D)``, ``keep (U, P)`` uint8 (1 on
    each prompt's tokens), ``gen_keys/values (B, H, R, D)`` of which the first ``t`` positions are
    filled, ``starts (U + 1,)`` int64 (rows of prompt ``u`` are ``starts[u] .. starts[u + 1] - 1``).
    Returns ``(B, H, G, D)``: softmax over each prompt's kept tokens and the row's ``t`` generated ones.
    """
    lib = load()
    b, h, g, d = q.shape
    u, _, p, _ = prompt_keys.shape
    out = torch.empty_like(q)
    rc = lib.decode_attention(q.data_ptr(), prompt_keys.data_ptr(), prompt_values.data_ptr(), keep.data_ptr(),
                              gen_keys.data_ptr(), gen_values.data_ptr(), starts.data_ptr(), out.data_ptr(),
                              u, h, g, d, p, gen_keys.shape[2], t, threads or torch.get_num_threads())
    if rc != 0:
        raise MemoryError("decode-attention kernel could not allocate its score buffer")
    return out
