"""Resumable checkpoints: the train state through Orbax, each host's input position beside it.

A run resumes exactly where it stopped only if the checkpoint of step N holds
both the state after N steps and the input stream positioned at batch N. The
loop prefetches to device, so the tf.data iterator runs a batch or two ahead
of the step; `feed.DataIterator` remembers the host batches fetched but not
yet trained on, and the checkpoint stores them next to the iterator's own
state.

The train state is stored unreplicated, in its global shapes: a pmap run
saves one replica from the host, a mesh run its sharded arrays (each process
writes its own shards). Either restores into either, on any number of
devices: the restore target says the shapes and, for a mesh, the shardings
to read into.

The input state is a custom Orbax item (`DataIteratorHandler`) rather than a
file written after Orbax commits, and asynchronous like the train state: at
`save()` (the moment the step is known) it takes the iterator state, the
pending batches and their description as bytes in memory, and writes them in
the background into the same temporary directory as the train state. Orbax
makes the step visible only once every item is written, with one atomic
rename (or one commit marker on GCS): a kill at any point leaves either the
complete new step or none of it, and the previous step stays usable.
"""

import asyncio
import collections
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import re
import sys
from typing import Optional
import uuid

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from pipeline.errors import UserError
from trainer import writer_priority
from trainer.feed import DataIterator
from trainer.run_dir import CHECKPOINT_DIR, OutputDirError, absolute

class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the model or the cluster it is restored into."""


class CheckpointWriteError(OutputDirError):
    """A checkpoint could not be written (disk full, no permission); the earlier ones stay."""


class DataIteratorHandler(ocp.AsyncCheckpointHandler):
    """Writes this process's tf.data iterator state and pending batches under process_<i>/.

    Every process calls it with the same step directory; each writes only its
    own subdirectory, so hosts never overwrite each other. The state is taken
    when save is called and written later: on gs:// each file is a round trip
    the train step should not wait for.
    """

    async def async_save(self, directory: epath.Path, args: "DataIteratorSave"):
        files = input_state_files(args.data)
        # Run once Orbax has created the step's temporary directory, before it commits.
        return [ocp.future.CommitFutureAwaitingContractedSignals(
            asyncio.to_thread(_write_files, _process_dir(directory), files),
            name="input_state_save")]

    def save(self, directory: epath.Path, args: "DataIteratorSave"):
        _write_files(_process_dir(directory), input_state_files(args.data))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
        process_dir = _process_dir(directory)
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
        if meta.get("host_batch", args.data.host_batch) != args.data.host_batch:
            raise CheckpointMismatchError(
                f"{directory} was written with batches of {meta['host_batch']} examples per "
                f"process, this run's have {args.data.host_batch}: the input position cannot "
                "carry over. To resume on another number of devices, keep the batch: "
                f"--global_train_batch_size {meta['host_batch'] * jax.process_count()}")
        tf.train.Checkpoint(iterator=args.data.iterator).read(
            str(process_dir / "iterator")).assert_consumed()
        arrays = dict(np.load(io.BytesIO((process_dir / "pending.npz").read_bytes())))
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


def _process_dir(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}"


def input_state_files(data: DataIterator) -> dict:
    """{file name: bytes} of data's exact position now: what DataIteratorHandler writes.

    tf.data saves an iterator only through a checkpoint file, so it is written
    to TensorFlow's in-memory file system and read back.
    """
    scratch = f"ram://mlm-stream-input-state/{uuid.uuid4().hex}"
    try:
        tf.train.Checkpoint(iterator=data.iterator).write(f"{scratch}/iterator")
        files = {}
        for path in tf.io.gfile.glob(f"{scratch}/iterator*"):
            with tf.io.gfile.GFile(path, "rb") as file:
                files[os.path.basename(path)] = file.read()
    finally:
        if tf.io.gfile.exists(scratch):
            tf.io.gfile.rmtree(scratch)
    batches = data.unconsumed()
    arrays = {f"{i}.{name}": value for i, batch in enumerate(batches)
              for name, value in batch.items()}
    buffer = io.BytesIO()  # zipfile needs a file it can read back; gs:// files are write-only
    np.savez(buffer, **arrays)
    files["pending.npz"] = buffer.getvalue()
    meta = {"process_count": jax.process_count(), "pending_batches": len(batches),
            "host_batch": data.host_batch}
    files["meta.json"] = json.dumps(meta).encode()
    return files


def _write_files(directory: epath.Path, files: dict):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)


def fingerprint(host_tree) -> str:
    """A short hash of a host pytree's values: hosts whose replicas agree print the same one."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(host_tree):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


class Checkpoints:
    """Keeps the last `save_total_limit` checkpoints of a run under output_dir/checkpoints.

    Saves are asynchronous: the state and the input position are copied to host
    memory, written in the background while training goes on (by threads at
    the lowest CPU priority: `writer_priority`), and `wait()` (or the next save)
    joins them; a failed write is raised there.
    """

    def __init__(self, output_dir, *, save_total_limit: Optional[int] = None,
                 async_save: bool = True, read_only: bool = False):
        """read_only: another run's checkpoints, to read and leave as they are."""
        self.directory = absolute(output_dir) / CHECKPOINT_DIR  # Orbax: absolute
        options = ocp.CheckpointManagerOptions(
            max_to_keep=save_total_limit,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only)
        with self._writing(None):  # creating the directory is the first write
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "data": DataIteratorHandler()})
        self._in_flight: Optional[int] = None  # the step being written in the background
        _quiet_background_write_errors()

    @property
    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data: DataIterator, *, wait: bool = False):
        """Saves a train state (a feed's `saveable`) and this host's input position."""
        self.wait()  # a failed previous save is reported as that step's, not this one's
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=DataIteratorSave(data))
        with self._writing(step), writer_priority.writers_at_lowest_priority():
            self._manager.save(step, args=args, force=True)
        self._in_flight = step
        if wait:
            self.wait()

    def restore(self, template, data: Optional[DataIterator], step: Optional[int] = None):
        """Returns the state of `step` (default: latest) shaped and placed like `template`.

        Template leaves are arrays (restored as numpy) or jax.ShapeDtypeStructs
        with shardings (restored as jax.Arrays, each device reading its shards):
        a feed's `restore_target`. `data` is repositioned in place (None: an
        evaluation-only run, which reads no training data). A
        checkpoint of another model (different parameter names or shapes) is a
        `CheckpointMismatchError` naming the first difference.
        """
        step = self.latest_step if step is None else step
        template = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x), template)
        stored = self._manager.item_metadata(step)["state"]
        _check_same_shapes(template, stored, self.directory / str(step))
        items = {"state": ocp.args.StandardRestore(template)}
        if data is not None:
            items["data"] = DataIteratorRestore(data)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def saving(self) -> bool:
        """Whether a save is still being written in the background."""
        return self._manager.is_saving_in_progress()

    def wait(self):
        # Workers TensorStore starts for the write in flight are lowered too: at every save
        # lowering those it knows of would leave them at the step's priority until the next.
        with self._writing(self._in_flight), writer_priority.writers_at_lowest_priority():
            self._manager.wait_until_finished()
        self._in_flight = None

    def close(self):
        with self._writing(self._in_flight), writer_priority.writers_at_lowest_priority():
            self._manager.close()

    @contextlib.contextmanager
    def _writing(self, step: Optional[int]):
        """Turns a failed write (disk full, read-only, ...) into one CheckpointWriteError.

        The step directory stays temporary, so the message can name the last
        committed checkpoint: the one a rerun resumes from.
        """
        try:
            yield
        except (OSError, ValueError, tf.errors.OpError) as error:
            what = "the checkpoints directory" if step is None else f"the checkpoint of step {step}"
            kept = ocp.path.step.checkpoint_steps(self.directory) if self.directory.exists() \
                else []
            outcome = (f"the checkpoint of step {max(kept)} is kept and a rerun resumes from it"
                       if kept else "there is no earlier checkpoint")
            raise CheckpointWriteError(f"could not write {what} to {self.directory}: "
                                       f"{_os_reason(error)}; {outcome}") from error


def _os_reason(error) -> str:
    """The system's words for a failed write ('No space left on device') where known."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    code = re.search(r"os_error_code='?(\d+)", str(error))  # how TensorStore reports it
    if code:
        return os.strerror(int(code.group(1)))
    for number in errno.errorcode:  # TensorFlow's own writes (the input state): "path; reason"
        if f"; {os.strerror(number)}" in str(error):
            return os.strerror(number)
    return str(error).strip().splitlines()[0]


def _quiet_background_write_errors():
    """Drops the tracebacks a failed background save prints besides raising its error.

    The error is raised again in the main thread (at the next save, wait or
    close), where it becomes one CheckpointWriteError line. Meanwhile Orbax
    logs it with tracebacks, and TensorStore, finishing the step's other writes
    after Orbax closed their event loop, reports each as an unraisable
    "Event loop is closed", or asyncio logs it as "Future exception was never
    retrieved" (or, for Orbax's own write tasks, "Task exception was never
    retrieved"): a console of tracebacks for a user whose disk is full.
    """
    for name, drop in (("absl", _orbax_traceback),  # every absl call, Orbax's included
                       ("asyncio", _abandoned_future)):
        logger = logging.getLogger(name)
        if drop not in logger.filters:
            logger.addFilter(drop)
    if not getattr(sys.unraisablehook, "_quiet_abandoned_writes", False):
        sys.unraisablehook = _unless_abandoned_write(sys.unraisablehook)


def _orbax_traceback(record: logging.LogRecord) -> bool:
    """False (drop) for an Orbax log record that carries a traceback."""
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


def _abandoned_future(record: logging.LogRecord) -> bool:
    """False (drop) for asyncio's report of a write future or Orbax write task nobody waited for."""
    message = record.getMessage()
    return not (message.startswith("Future exception was never retrieved")
                or (message.startswith("Task exception was never retrieved")
                    and f"{os.sep}orbax{os.sep}" in message))


def _unless_abandoned_write(hook):
    def quiet_hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            hook(unraisable)
    quiet_hook._quiet_abandoned_writes = True  # pylint: disable=protected-access
    return quiet_hook


def _path_name(path) -> str:
    """'params/encoder/kernel' for a key path, whether its nodes are dicts or dataclasses."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _check_same_shapes(template, stored, where):
    """Raises CheckpointMismatchError unless `stored` metadata has template's paths and shapes."""
    want = {_path_name(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(template)}
    have = {_path_name(p): tuple(getattr(m, "shape", ()) or ())
            for p, m in jax.tree_util.tree_leaves_with_path(stored)}
    # Model parameters first: the difference a user recognises.
    for path in sorted(want.keys() | have.keys(), key=lambda p: (not p.startswith("params"), p)):
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
