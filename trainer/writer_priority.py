"""Background checkpoint writes at the lowest CPU priority, so they take only the cores the step leaves.

An asynchronous save writes the state while the next steps run, and most of
its CPU time is TensorStore's worker threads. Where the step keeps every core
busy (the CPU backend; an input pipeline that fills the host), workers at the
step's priority take cores from it: on a 2-core machine the step after a save
took up to 1.8x the median step. At the lowest priority (nice 19, which still
guarantees them a share, unlike SCHED_IDLE) they write in the gaps between and
within steps. On a TPU host with idle cores nothing changes.

Only TensorStore's workers: lowering Orbax's own Python threads as well left a
save to the GCS emulator unfinished after an hour of training (most likely
starved of the interpreter lock, which they share with the training loop).

Linux only: there a thread's priority is its own. TensorStore starts workers
as it needs them, from whichever thread asks, so they are looked up again at
every save.
"""

import contextlib
import os
import sys

WRITER_THREAD_NAME = "ts_pool_worker"  # what TensorStore names its worker threads
LOWEST_PRIORITY = 19


@contextlib.contextmanager
def writers_at_lowest_priority():
    """Lowers TensorStore's workers, those before the block and those it starts, to nice 19."""
    if not sys.platform.startswith("linux"):
        yield
        return
    _lower(writer_threads())  # the workers earlier saves started
    yield
    _lower(writer_threads())


def writer_threads() -> list:
    """The thread ids of this process's TensorStore workers (none where /proc cannot be read)."""
    try:
        names = os.listdir("/proc/self/task")
    except OSError:  # a sandbox without /proc: the writers keep their priority
        return []
    ids = []
    for name in names:
        try:
            with open(f"/proc/self/task/{name}/comm", encoding="utf-8") as comm:
                if comm.read().strip() == WRITER_THREAD_NAME:
                    ids.append(int(name))
        except OSError:  # the thread ended since it was listed
            pass
    return ids


def _lower(thread_ids):
    for thread_id in thread_ids:
        try:
            os.setpriority(os.PRIO_PROCESS, thread_id, LOWEST_PRIORITY)
        except OSError:  # the thread ended since it was listed
            pass
