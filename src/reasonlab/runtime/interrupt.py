"""Ctrl-C during training: finish the current step, save, then stop.

Trainers wrap their loop in :class:`StopOnCtrlC` and check ``requested`` after each optimizer step.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopOnCtrlC:
    """First Ctrl-C: finish the current optimizer step, save a checkpoint, stop. Second: stop at once.

    Stopping between steps (rather than wherever KeyboardInterrupt lands) guarantees the saved
    weights, optimizer and data position belong to the same completed step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._prev: Any = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to quit without saving)", file=sys.stderr)

    def __enter__(self) -> "StopOnCtrlC":
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
