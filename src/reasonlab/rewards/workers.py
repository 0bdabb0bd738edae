"""A small process pool whose calls have a hard timeout: a call that runs too long is killed.

Why not ``concurrent.futures.ProcessPoolExecutor`` or ``multiprocessing.Pool``: neither can stop a
call that hangs (a sympy simplification of ``9^{9^{9^9}}`` runs for ever), and a worker that dies
breaks the whole executor. math-verify's own timeout uses ``signal.alarm``, which only works on the
main thread of the main interpreter and cannot interrupt C code that never returns to Python.

So each worker here is one ``multiprocessing.Process`` with one ``Pipe``. The parent sends a call,
waits on all pipes at once with :func:`multiprocessing.connection.wait`, and when a call passes its
deadline it SIGKILLs that worker and marks the call ``"timeout"``; a worker that dies mid-call
(segfault, ``os._exit``, out of memory) gives ``"error"``. Dead workers are replaced lazily, on the
next call that needs them, so the pool stays usable. Workers use the ``spawn`` start method: forking
a parent that runs torch's thread pools can deadlock the child.

The timeout counts from the moment a ready worker receives the call: a worker's start-up (importing
sympy takes a second or more) is not charged to the first call it serves.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, NamedTuple, Sequence

__all__ = ["Outcome", "WorkerPool"]

#: How long a worker may take to start (spawn a Python, import, run the initializer).
STARTUP_TIMEOUT = 120.0


class Outcome(NamedTuple):
    """What one call gave: ``status`` is ``"ok"`` (``value`` holds the return value),
    ``"timeout"`` or ``"error"`` (``error`` says what happened)."""

    status: str
    value: Any = None
    error: str = ""


def _worker_main(conn: Connection, fn: Callable[..., Any], initializer: Callable[[], None] | None) -> None:
    """Loop of one worker process: run ``fn(*args)`` for each ``args`` received, send the outcome."""
    try:
        if initializer is not None:
            initializer()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the calls
        conn.send(("startup_error", None, f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None, ""))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        try:
            outcome = ("ok", fn(*args), "")
        except BaseException as e:  # noqa: BLE001 - any failure of fn is the caller's "error"
            outcome = ("error", None, f"{type(e).__name__}: {e}")
        try:
            conn.send(outcome)
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable return value
            conn.send(("error", None, f"could not send the result back: {type(e).__name__}: {e}"))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, fn: Callable[..., Any], initializer: Callable[[], None] | None):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, fn, initializer), daemon=True)
        self.process.start()
        child_conn.close()  # so that the parent sees EOF when the child dies
        self.ready = False
        self.started_at = time.monotonic()
        self.task: int | None = None  # index of the call it is running
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()  # SIGKILL: a hung C extension ignores anything gentler
        self.process.join(timeout=5)
        self.conn.close()

    def describe_death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"worker process died ({how})"


class WorkerPool:
    """Runs ``fn(*args)`` in ``workers`` processes, each call with a hard ``timeout`` in seconds.

    ``fn`` (and ``initializer``, run once in each new worker before it takes calls) must be
    picklable: defined at the top level of an importable module. Use from any thread; concurrent
    :meth:`map` calls are served one after the other. As with any ``spawn`` pool, a script that
    creates one must keep its top-level code under ``if __name__ == "__main__":`` (each worker
    imports the script's module).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        workers: int = 1,
        timeout: float = 5.0,
        initializer: Callable[[], None] | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.fn, self.workers, self.timeout, self.initializer = fn, workers, timeout, initializer
        self._ctx = mp.get_context("spawn")
        self._slots: list[_Worker | None] = [None] * workers  # started lazily
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        return [w.process.pid for w in self._slots if w is not None and w.process.pid is not None]

    def busy_pids(self) -> list[int]:
        """Process ids of the workers running a call right now."""
        return [w.process.pid for w in self._slots if w is not None and w.task is not None and w.process.pid]

    def map(self, calls: Sequence[tuple[Any, ...]]) -> list[Outcome]:
        """Run ``fn(*args)`` for each ``args`` in ``calls``, in parallel; outcomes in input order."""
        with self._lock:
            if self._closed:
                raise RuntimeError("WorkerPool is closed")
            return self._map(list(calls))

    def _map(self, calls: list[tuple[Any, ...]]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        # Start only as many workers as there are calls to run.
        for i in range(min(self.workers, len(calls))):
            if self._slots[i] is None:
                self._slots[i] = _Worker(self._ctx, self.fn, self.initializer)

        while pending or any(w is not None and w.task is not None for w in self._slots):
            # Hand calls to ready, idle workers; a dead slot gets a fresh worker while calls remain.
            for i, w in enumerate(self._slots):
                if w is None and pending and i < len(calls):
                    w = self._slots[i] = _Worker(self._ctx, self.fn, self.initializer)
                if w is not None and w.ready and w.task is None and pending:
                    w.task = pending.popleft()
                    try:
                        w.conn.send(calls[w.task])
                    except Exception as e:  # noqa: BLE001 - unpicklable arguments, or a dead pipe
                        results[w.task] = Outcome("error", None, f"could not send the call: {type(e).__name__}: {e}")
                        w.task = None
                        continue
                    w.deadline = time.monotonic() + self.timeout

            live = [w for w in self._slots if w is not None]
            if not live:
                break
            # Sleep until a message arrives or the nearest deadline (of a call, or of a start-up).
            deadlines = [w.started_at + STARTUP_TIMEOUT for w in live if not w.ready]
            deadlines += [w.deadline for w in live if w.task is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready_conns = wait([w.conn for w in live], timeout=timeout)

            for i, w in enumerate(self._slots):
                if w is None:
                    continue
                if w.conn in ready_conns:
                    try:
                        status, value, error = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (segfault, os._exit, OOM kill)
                        death = w.describe_death()
                        self._replace(i)
                        if w.task is not None:
                            results[w.task] = Outcome("error", None, death)
                        elif not w.ready:
                            self._fail_pending(pending, results, f"worker failed to start: {death}")
                        continue
                    if status == "ready":
                        w.ready = True
                    elif status == "startup_error":
                        self._replace(i)
                        self._fail_pending(pending, results, f"worker failed to start: {error}")
                    else:
                        assert w.task is not None
                        results[w.task] = Outcome(status, value, error)
                        w.task = None
                elif w.task is not None and time.monotonic() >= w.deadline:
                    results[w.task] = Outcome("timeout", None, f"call exceeded {self.timeout:g}s and was killed")
                    self._replace(i)
                elif not w.ready and time.monotonic() >= w.started_at + STARTUP_TIMEOUT:
                    self._replace(i)
                    self._fail_pending(pending, results, f"worker did not start within {STARTUP_TIMEOUT:g}s")

        return [r if r is not None else Outcome("error", None, "call was not run") for r in results]

    def _replace(self, i: int) -> None:
        """Kill the worker in slot ``i``; a fresh one is started when a call needs it."""
        w = self._slots[i]
        if w is not None:
            w.kill()
        self._slots[i] = None

    @staticmethod
    def _fail_pending(pending: deque[int], results: list[Outcome | None], message: str) -> None:
        # A worker that cannot start will not start on a retry either: fail the waiting calls
        # instead of looping for ever.
        while pending:
            results[pending.popleft()] = Outcome("error", None, message)

    def close(self) -> None:
        """Stop all workers. The pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            # Workers hold no state worth a clean shutdown, and a busy one may be hung: kill them.
            for i in range(len(self._slots)):
                self._replace(i)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
