"""What every long run needs, knowing nothing of models or algorithms.

- :class:`RunDir` (``runtime.rundir``) — the run directory: resolved config, crash-safe JSONL,
  atomic JSON.
- :func:`save_checkpoint` / :func:`latest_checkpoint` / :func:`load_checkpoint`
  (``runtime.checkpoint``) — atomic checkpoints that resume exactly (weights, optimizer,
  scheduler, RNG, data position).
- :class:`MetricsLogger` (``runtime.metrics``) — metrics to ``metrics.jsonl``, TensorBoard and the
  console.

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
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'reasonlab.runtime' has no attribute {name!r}")
