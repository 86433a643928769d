"""Stopping on a preemption notice (SIGTERM) or Ctrl-C (SIGINT) at a step boundary."""

import signal
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np


class Stopped(Exception):
    """The run stopped early on a signal, after saving; exit_code is 128 + the signal number."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code, self.message = exit_code, message


class StopRequest:
    """Turns SIGTERM/SIGINT into a request the loop honours at a step boundary.

    The handler only records the signal, so a save never starts in the middle
    of a step. A second SIGINT falls back to the default (KeyboardInterrupt),
    letting a user at a terminal force an exit. With several processes the
    flags are exchanged every `sync_every` steps (a small all-gather that waits
    for the step), so that all processes stop, and save, at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, sync_every: int = 1):
        self.signum: Optional[int] = None
        self.sync_every = sync_every
        self._previous: dict = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`; every process must call it at every step."""
        flag = self.signum is not None
        if jax.process_count() == 1:
            return flag
        if step % self.sync_every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.array(flag))))

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def exit_code(self) -> int:
        """The conventional status of a process ended by this signal (128 + signum)."""
        return 128 + (self.signum or 0)

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
