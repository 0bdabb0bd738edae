"""What every long run needs, knowing nothing of models or algorithms.

- :class:`RunDir` (``runtime.rundir``) — the run directory: resolved config, crash-safe JSONL,
  atomic JSON.
- :func:`save_checkpoint` / :func:`latest_checkpoint` / :func:`load_checkpoint`
  (``runtime.checkpoint``) — atomic checkpoints that resume exactly (weights, optimizer,
  scheduler, RNG, data position).
- :class:`MetricsLogger` (``runtime.metrics``) — metrics to ``metrics.jsonl``, TensorBoard and the
  console.
- :class:`Monitor` (``runtime.monitor``) — the anomaly monitor (reward jumps, entropy collapse, KL
  blow-up, length explosion/collapse, NaN, exploding gradients) and :func:`rollback`.
- :func:`plot_metrics` / :func:`plot_runs` (``runtime.plots``) — learning curves as PNG.
- :class:`StopOnCtrlC` (``runtime.interrupt``) — Ctrl-C finishes the step and saves.
- :class:`World` / :func:`init_world` (``runtime.distributed``) — data-parallel runs under ``torchrun``.

Names are imported on first use, so that a run directory can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RunDir": "reasonlab.runtime.rundir",
    "MetricsLogger": "reasonlab.runtime.metrics",
    "save_checkpoint": "reasonlab.runtime.checkpoint",
    "latest_checkpoint": "reasonlab.runtime.checkpoint",
    "load_checkpoint": "reasonlab.runtime.checkpoint",
    "StopOnCtrlC": "reasonlab.runtime.interrupt",
    "Monitor": "reasonlab.runtime.monitor",
    "MonitorConfig": "reasonlab.runtime.monitor",
    "Anomaly": "reasonlab.runtime.monitor",
    "rollback": "reasonlab.runtime.monitor",
    "last_good_checkpoint": "reasonlab.runtime.monitor",
    "plot_metrics": "reasonlab.runtime.plots",
    "plot_runs": "reasonlab.runtime.plots",
    "World": "reasonlab.runtime.distributed",
    "init_world": "reasonlab.runtime.distributed",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'reasonlab.runtime' has no attribute {name!r}")
