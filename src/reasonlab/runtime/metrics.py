"""Scalar metrics to three sinks: ``metrics.jsonl`` (the record), TensorBoard, and a console line.

``metrics.jsonl`` holds one ``{"step": N, ...}`` record per ``log`` call and is what plots, reports
and tests read. TensorBoard gets every numeric value as a scalar (``tensorboard --logdir <run>``);
if ``torch.utils.tensorboard`` cannot be imported, a warning is logged once and the run goes on.
The console gets one short line per call, printed through rich's shared console so it appears
above a trainer's live progress bar instead of tearing it.

Resuming: pass ``resume_step`` (the step of the checkpoint the run resumed from). Records after it
are dropped from ``metrics.jsonl`` and TensorBoard purges its events after it, because the resumed
run is about to log those steps again — the history then reads as if the run never stopped.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from pathlib import Path
from typing import Any, Mapping

from reasonlab.runtime.rundir import RunDir

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(v)
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}"


class MetricsLogger:
    """Log ``{name: value}`` dicts by step to JSONL, TensorBoard and the console."""

    def __init__(self, run_dir: RunDir | str | Path, tensorboard: bool = True, console: bool = True,
                 resume_step: int | None = None):
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.console = console
        self._writer = None
        self._start = time.time()
        if resume_step is not None:
            kept = [r for r in self.run.read_jsonl(METRICS_FILE) if int(r.get("step", 0)) <= resume_step]
            self.run.rewrite_jsonl(METRICS_FILE, kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as e:  # tensorboard missing or broken: metrics.jsonl is still complete
                log.warning("TensorBoard logging is off (%s); metrics still go to %s", e, METRICS_FILE)
            else:
                purge = resume_step + 1 if resume_step is not None else None
                self._writer = SummaryWriter(log_dir=str(self.run / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at ``step``. Non-numeric values go only to the JSONL record."""
        record = {"step": int(step), **{k: (float(v) if _is_float(v) else v) for k, v in metrics.items()}}
        record.setdefault("time", round(time.time() - self._start, 3))
        self.run.append_jsonl(METRICS_FILE, record)
        if self._writer is not None:
            for k, v in record.items():
                if k != "step" and k != "time" and isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
                    self._writer.add_scalar(k, float(v), int(step))
        if self.console:
            from rich import get_console

            body = "  ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k not in ("step", "time"))
            get_console().print(f"[dim]step {step}[/dim]  {body}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_float(v: Any) -> bool:
    """True for numeric scalars that are not plain Python ints/bools (numpy and torch scalars)."""
    if isinstance(v, (bool, int, str)):
        return False
    if isinstance(v, numbers.Real):
        return True
    item = getattr(v, "item", None)  # 0-d tensors / arrays
    return callable(item) and getattr(v, "ndim", 1) == 0
