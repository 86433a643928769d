"""Python functions that tf.data threads call (tokenizer, block reads, JSON parsing).

Each call runs inside `with CALLS:`, so that interpreter exit stops them
cleanly instead of hanging or aborting the process; a dataset that makes
such calls is saved and restored with `checkpointable`.
"""

import atexit
import threading
import time

import tensorflow as tf


class _Calls:
    """Tracks the calls in progress so that interpreter exit can wait for the streams to go quiet.

    A tf.data thread that needs the GIL while the interpreter finalizes never
    gets it, and TensorFlow then waits for that thread forever: a script
    exiting with a live iterator (or an uncaught exception holding one) would
    hang. At exit, new calls fail at once, which ends the streams; exit then
    waits until no call has run or started for a moment.
    """

    _QUIET_S = 0.2

    def __init__(self):
        self._lock = threading.Lock()
        self._running = 0
        self._last = 0.0
        self._closing = False

    def __enter__(self):
        with self._lock:
            self._last = time.monotonic()
            if self._closing:
                raise RuntimeError("the interpreter is exiting; the input pipeline stopped")
            self._running += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._running -= 1
            self._last = time.monotonic()

    def close(self, timeout_s=10.0):
        with self._lock:
            self._closing = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running and time.monotonic() - self._last > self._QUIET_S:
                    return
            time.sleep(0.02)


CALLS = _Calls()
atexit.register(CALLS.close)


def checkpointable(ds):
    """ds with its iterator state checkpointable despite the pipeline's Python calls.

    Parsing and tokenizing run in `numpy_function`s, which tf.data counts as
    external state; they are pure, so the state can ignore them.
    """
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return ds.with_options(options)
