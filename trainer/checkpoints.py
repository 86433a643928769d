"""Resumable checkpoints: the train state through Orbax, each host's input position beside it.

A run resumes exactly where it stopped only if the checkpoint of step N holds
both the state after N steps and the input stream positioned at batch N. The
loop prefetches to device, so the tf.data iterator runs a batch or two ahead
of the step; `DataIterator` remembers the batches fetched but not yet trained
on, and the checkpoint stores them next to the iterator's own state.

The input state is a custom Orbax item (`DataIteratorHandler`) rather than a
file written after Orbax commits: Orbax calls a synchronous handler during
`save()` (the moment the step is known), writes it into the same temporary
directory as the train state, and makes the whole step visible with one
atomic rename (or one commit marker on GCS). A kill at any point leaves either
the complete new step or none of it, and the previous step stays usable.
"""

import collections
import dataclasses
import json
import signal
import threading
from typing import Optional

from etils import epath
import flax.jax_utils
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_MARKER = "run_args.json"  # written first into every output_dir this trainer uses


class OutputDirError(ValueError):
    """The output directory cannot be used as asked (a user error, reported in one line)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model or the cluster it is restored into."""


class DataIterator:
    """Numpy batches from a tf.data dataset whose exact position can be checkpointed.

    Iterate it through `to_device`: batches handed to the device prefetcher
    but not yet yielded to the loop stay in `pending` and are saved with the
    tf.data iterator state, so a restore replays them first.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self.iterator = iter(dataset)
        self.pending = collections.deque()  # fetched from tf.data, not yet trained on
        self.replay = collections.deque()  # restored pending batches, to serve first

    def __iter__(self):
        return self

    def __next__(self):
        if self.replay:
            batch = self.replay.popleft()
        else:
            batch = jax.tree.map(lambda t: t.numpy(), next(self.iterator))
        self.pending.append(batch)
        return batch

    def to_device(self, size: int = 2, axis_name: str = "batch"):
        """Yields device batches (`prefetch_to_device`), each counted as consumed when yielded.

        `axis_name` should be the pmap axis: arrays laid out on a mesh of
        another name make the pmapped step compile a second time.
        """
        for batch in flax.jax_utils.prefetch_to_device(self, size, axis_name=axis_name):
            self.pending.popleft()
            yield batch

    def unconsumed(self) -> list:
        """The batches the next train steps will see before the tf.data iterator's next one."""
        return list(self.pending) + list(self.replay)


class DataIteratorHandler(ocp.CheckpointHandler):
    """Writes this process's tf.data iterator state and pending batches under process_<i>/.

    Every process calls it with the same step directory; each writes only its
    own subdirectory, so hosts never overwrite each other.
    """

    def save(self, directory: epath.Path, args: "DataIteratorSave"):
        process_dir = directory / f"process_{jax.process_index()}"
        process_dir.mkdir(parents=True, exist_ok=True)
        tf.train.Checkpoint(iterator=args.data.iterator).write(str(process_dir / "iterator"))
        batches = args.data.unconsumed()
        arrays = {f"{i}.{name}": value for i, batch in enumerate(batches)
                  for name, value in batch.items()}
        with (process_dir / "pending.npz").open("wb") as f:
            np.savez(f, **arrays)
        meta = {"process_count": jax.process_count(), "pending_batches": len(batches)}
        (process_dir / "meta.json").write_text(json.dumps(meta))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
        process_dir = directory / f"process_{jax.process_index()}"
        if not process_dir.exists():
            raise CheckpointMismatchError(
                f"{directory} has no input state for process {jax.process_index()}: "
                f"the checkpoint was written by a run with fewer processes")
        meta = json.loads((process_dir / "meta.json").read_text())
        if meta["process_count"] != jax.process_count():
            raise CheckpointMismatchError(
                f"{directory} was written by {meta['process_count']} processes, "
                f"this run has {jax.process_count()}; each host's input position "
                "cannot be carried over to a different number of hosts")
        tf.train.Checkpoint(iterator=args.data.iterator).read(
            str(process_dir / "iterator")).assert_consumed()
        with (process_dir / "pending.npz").open("rb") as f:
            arrays = dict(np.load(f))
        batches = collections.defaultdict(dict)
        for key, value in arrays.items():
            index, name = key.split(".", 1)
            batches[int(index)][name] = value
        args.data.pending.clear()
        args.data.replay = collections.deque(batches[i] for i in sorted(batches))
        return args.data


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    data: DataIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    data: DataIterator


def to_host(replicated_tree):
    """One copy of a pmap-replicated pytree as numpy arrays.

    Reads this process's first shard, so it also works when the arrays span
    several processes; a shard keeps the device axis under some shardings.
    """
    def first(x):
        shard = np.asarray(x.addressable_data(0))
        return shard[0] if shard.ndim == x.ndim else shard
    return jax.tree.map(first, replicated_tree)


class Checkpoints:
    """Keeps the last `save_total_limit` checkpoints of a run under output_dir/checkpoints.

    Saves are asynchronous: the state is copied to host memory, written in the
    background while training goes on, and `wait()` (or the next save) joins it.
    """

    def __init__(self, output_dir, *, save_total_limit: Optional[int] = None,
                 async_save: bool = True):
        self.directory = epath.Path(output_dir).resolve() / CHECKPOINT_DIR  # Orbax: absolute
        options = ocp.CheckpointManagerOptions(
            max_to_keep=save_total_limit,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": DataIteratorHandler()})

    @property
    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data: DataIterator, *, wait: bool = False):
        """Saves the pmap-replicated train state and this host's input position."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(to_host(state)),
            data=DataIteratorSave(data))
        self._manager.save(step, args=args, force=True)
        if wait:
            self.wait()

    def restore(self, template, data: DataIterator, step: Optional[int] = None):
        """Returns the host state of `step` (default: latest) shaped like `template`.

        `data` is repositioned in place. A checkpoint of another model (different
        parameter names or shapes) is a `CheckpointMismatchError` naming the first
        difference.
        """
        step = self.latest_step if step is None else step
        template = jax.tree.map(np.asarray, template)
        stored = self._manager.item_metadata(step)["state"]
        _check_same_shapes(template, stored, self.directory / str(step))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template),
            data=DataIteratorRestore(data)))
        return restored["state"]

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def _path_name(path) -> str:
    """'params/encoder/kernel' for a key path, whether its nodes are dicts or dataclasses."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _check_same_shapes(template, stored, where):
    """Raises CheckpointMismatchError unless `stored` metadata has template's paths and shapes."""
    want = {_path_name(p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(template)}
    have = {_path_name(p): tuple(getattr(m, "shape", ()) or ())
            for p, m in jax.tree_util.tree_leaves_with_path(stored)}
    for path in sorted(want.keys() | have.keys()):
        if path not in have:
            raise CheckpointMismatchError(
                f"checkpoint {where} has no {path}: it was written for a different model "
                "or optimizer; use a new output_dir or --overwrite_output_dir")
        if path not in want:
            raise CheckpointMismatchError(
                f"checkpoint {where} holds {path}, which this model does not have: it was "
                "written for a different model or optimizer")
        if want[path] != have[path]:
            raise CheckpointMismatchError(
                f"checkpoint {where}: {path} has shape {have[path]}, this model expects "
                f"{want[path]}: it was written for a different model configuration")


def check_output_dir(output_dir, *, overwrite: bool) -> bool:
    """Refuses an output_dir that holds someone else's files; returns whether to resume from it.

    A directory is ours when it holds RUN_MARKER. Anything else that is not
    empty is refused without --overwrite_output_dir. Reads only: call it on
    every process before anything is written.
    """
    path = epath.Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output_dir {output_dir} is a file, not a directory")
    entries = sorted(p.name for p in path.iterdir()) if path.exists() else []
    ours = RUN_MARKER in entries
    if entries and not ours and not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputDirError(
            f"output_dir {output_dir} already holds files that are not from this trainer "
            f"({shown}); pass --overwrite_output_dir to write into it, or choose another "
            "directory")
    return ours and not overwrite


def claim_output_dir(output_dir, *, overwrite: bool, run_args: dict):
    """Marks output_dir as this trainer's (process 0 writes RUN_MARKER with the run's arguments).

    With overwrite, our old checkpoints and logs are removed first (other
    files stay), so training starts from scratch. All processes wait for it.
    """
    path = epath.Path(output_dir)
    ocp.multihost.sync_global_processes("claim_output_dir:start")
    if jax.process_index() == 0:
        if overwrite:
            for name in (CHECKPOINT_DIR, LOG_DIR):
                if (path / name).exists():
                    (path / name).rmtree()
        path.mkdir(parents=True, exist_ok=True)
        (path / RUN_MARKER).write_text(json.dumps(run_args, indent=2, default=str) + "\n")
    ocp.multihost.sync_global_processes("claim_output_dir:done")


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
