"""Data-parallel runs: several processes (CPU cores or GPUs), each on its share of every batch.

Started by :func:`launch` (``reasonlab train grpo --nproc 2``) or by ``torchrun``, which set ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; otherwise the world is one process and every helper here is a
no-op, so single-process code pays nothing. Gloo carries the collectives on CPUs, NCCL on
GPUs. On a CPU, two processes with one thread each use two cores far better than one process with
two threads when the model is small: the per-operation Python and dispatch overhead runs in
parallel too, not only the matrix products.

The trainers keep the update exact: each process computes its share of the batch loss with weights
normalised by the *whole* batch (token and sequence counts summed over processes), and gradients
are summed (:func:`all_reduce_sum_`), so the optimizer sees the gradient of the full batch.
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run directory, logs, evaluates and checkpoints."""
        return self.rank == 0


def in_world() -> bool:
    """Whether this process was started as one of several (by torchrun or :func:`launch`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` fresh processes on this machine, as torchrun would; return rank 0's result.

    ``fn`` must be importable (a module-level function) and ``args`` picklable. Each process gets an
    equal share of the CPU cores as torch threads unless ``OMP_NUM_THREADS`` says otherwise. A failing
    process fails the whole launch with its error.

    The elastic agent (torch's, the one torchrun runs) lives in a launcher process of its own: its
    rendezvous store keeps native threads that can abort the interpreter that started it at exit, so
    the caller (a CLI, a notebook, a test session) never hosts it.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    launcher = ctx.Process(target=_launcher, args=(send, os.getpid(), nproc, fn, args), name="reasonlab-launcher")
    launcher.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        launcher.join()
        raise RuntimeError(f"the launcher of {nproc} processes died (exit code {launcher.exitcode})") from None
    finally:
        receive.close()
    launcher.join()
    if outcome[0] == "error":
        raise outcome[1]
    results = outcome[1]
    for rank in sorted(results):  # the first process's error first: the others usually fail because it did
        if results[rank][0] == "error":
            raise results[rank][1]
    return results[0][1]


def die_with_parent(parent_pid: int) -> None:
    """End this process (SIGTERM) when its parent dies, on Linux; elsewhere a no-op.

    A killed ``reasonlab train --nproc 2`` (``kill``, an OOM kill, a closed terminal) must not leave its
    launcher and workers training on as orphans, holding the cores. ``PR_SET_PDEATHSIG`` asks the
    kernel for the signal; the parent id is checked afterwards in case it died before the request.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _launcher(send: Any, parent_pid: int, nproc: int, fn: Callable[..., Any], args: tuple) -> None:
    """The launcher process: runs torch's elastic agent and sends back every process's outcome."""
    die_with_parent(parent_pid)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    try:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"reasonlab-{os.getpid()}",
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                              start_method="spawn")
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
        send.send(("ok", elastic_launch(config, _run_with_threads)(int(threads), os.getpid(), fn, *args)))
    except Exception as e:  # noqa: BLE001 - handed to the caller
        send.send(("error", _portable(e)))
    finally:
        send.close()


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives a trip to another process, else a RuntimeError that says what it was. Some exceptions
    pickle but cannot be unpickled (torch's ``ChildFailedError`` needs constructor arguments its pickle lacks),
    which would turn the error into a ``TypeError`` in the caller."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def _run_with_threads(threads: int, launcher_pid: int, fn: Callable[..., Any], *args: Any) -> tuple:
    """A launched process: ``("ok", result)``, or ``("error", exception)`` handed back to the launcher, so a
    usage error in a process is the same one clear message as in a single-process run."""
    die_with_parent(launcher_pid)
    import torch

    torch.set_num_threads(threads)
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - re-raised by launch() in the parent
        import traceback

        from reasonlab.errors import ReasonlabError

        if not isinstance(e, ReasonlabError):  # a usage error is one line, printed by the launcher's caller
            print(traceback.format_exc(), file=sys.stderr)
        return ("error", _portable(e))


def init_world(device_type: str = "cpu") -> World:
    """Join the process group that ``torchrun`` set up (once per process); a lone process is ``World()``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum_(tensors: Sequence[Any], world: World) -> None:
    """Sum ``tensors`` over all processes, in place, with one collective (they are flattened into one buffer)."""
    if world.size <= 1 or not tensors:
        return
    import torch
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def sum_float(x: float, world: World) -> float:
    """``x`` summed over all processes."""
    if world.size <= 1:
        return x
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's ``obj``, in rank order (on every process)."""
    if world.size <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """The main process's ``obj``, on every process."""
    if world.size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# Summed over processes: throughput, counts, and the losses (each process's share of the batch loss).
_SUMMED = ("tokens_per_s", "verifier_timeouts", "verifier_errors", "/missing", "/errors", "loss")


def mean_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One metrics record of the whole batch from every process's record of its share.

    Numbers are averaged (each process has an equal share), except ``*_max`` / ``*_min`` (the extreme
    over processes), counts, throughput and losses (summed: timeouts, errors, missing rewards, tokens/s,
    and each process's share of the batch loss).
    Anything else is the first process's value.
    """
    out = dict(records[0])
    for k in records[0]:
        vals = [r.get(k) for r in records]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            continue
        if k.endswith("_max"):
            out[k] = max(vals)
        elif k.endswith("_min"):
            out[k] = min(vals)
        elif k.endswith(_SUMMED):
            out[k] = sum(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out


def close_world(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
