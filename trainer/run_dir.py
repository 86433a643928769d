"""The run's output directory: whose it is, whether it can be written, and its layout.

A directory is this trainer's when it holds RUN_MARKER, the arguments of its
latest run; those of earlier runs with other arguments are kept beside it as
run_args.1.json (the first), run_args.2.json, ... The checks run before
anything is written, so a refused directory is left as it was.
"""

import contextlib
import errno
import json
import os
import tempfile

from etils import epath
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from pipeline.errors import UserError
from trainer import args as args_lib, console

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_MARKER = "run_args.json"  # written first into every output_dir this trainer uses
EARLIER_RUN_ARGS = "run_args.{}.json"  # the arguments of earlier runs, 1 the first
NOT_COMPARED = ("output_dir",)  # a run directory may be moved or copied, and resumed there


class OutputDirError(UserError):
    """The output directory cannot be used as asked (a user error, reported in one line)."""


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
    _check_writable(output_dir)
    return ours and not overwrite


def _check_writable(output_dir):
    """Refuses a local output_dir this process cannot write, before hours of setup or training.

    Reads only (the mount flags and the permissions of the directory, or of its
    nearest existing parent). A remote (gs://) output_dir is found out at its
    first write, which claim_output_dir reports the same way.
    """
    if _is_remote(output_dir):
        return
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = errno.EROFS
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = errno.EACCES
    else:
        return
    raise OutputDirError(f"output_dir {output_dir} is not writable: {os.strerror(reason)}")


def _is_remote(output_dir):
    return "://" in str(output_dir)  # gs://bucket/..., or any other tf.io.gfile scheme


def absolute(path) -> epath.Path:
    """An absolute epath.Path: a local path resolved against the working directory, a URI as is.

    (`epath.Path("gs://b/run").resolve()` would make it `<cwd>/gs:/b/run`.)
    """
    return epath.Path(path if _is_remote(path) else os.path.abspath(path))


def claim_output_dir(output_dir, *, overwrite: bool, run_args: dict):
    """Marks output_dir as this trainer's (process 0 writes RUN_MARKER with the run's arguments).

    With overwrite, our old checkpoints and logs are removed first (other
    files stay), so training starts from scratch. All processes wait for it.
    """
    path = epath.Path(output_dir)
    marker, text = path / RUN_MARKER, json.dumps(run_args, indent=2, default=str) + "\n"
    ocp.multihost.sync_global_processes("claim_output_dir:start")
    if jax.process_index() == 0:
        try:
            if overwrite:
                for name in (CHECKPOINT_DIR, LOG_DIR):
                    if (path / name).exists():
                        (path / name).rmtree()
                for earlier in _earlier_run_args(path):
                    earlier.unlink()
            elif marker.exists() and marker.read_text() != text:  # keep the earlier arguments
                earlier = path / EARLIER_RUN_ARGS.format(len(_earlier_run_args(path)) + 1)
                earlier.write_text(marker.read_text())
            path.mkdir(parents=True, exist_ok=True)
            marker.write_text(text)
        except OSError as error:
            raise OutputDirError(f"output_dir {output_dir} is not writable: "
                                 f"{error.strerror or error}") from error
    ocp.multihost.sync_global_processes("claim_output_dir:done")


def _earlier_run_args(path):
    return list(path.glob(EARLIER_RUN_ARGS.format("*")))


def saved_run_args(output_dir):
    """The arguments of the latest run into output_dir (RUN_MARKER), or None if unreadable."""
    try:
        saved = json.loads((epath.Path(output_dir) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def changed_arguments(saved, run_args):
    """[(name, earlier value, value)] for the arguments both runs name that differ."""
    current = json.loads(json.dumps(run_args, default=str))  # compared as saved: JSON values
    return [(name, saved[name], value) for name, value in current.items()
            if name in saved and name not in NOT_COMPARED and saved[name] != value]


def check_resumed_arguments(output_dir, run_args, *, restoring: bool, training: bool):
    """Prints each argument changed since the last run, a line each; refuses what cannot change.

    With a checkpoint to restore, a change it cannot follow (args_lib.kept_on_resume)
    is an OutputDirError naming it and what to do. Reads only. Returns the
    earlier run's arguments, or None when there are none to compare.
    """
    saved = saved_run_args(output_dir)
    if saved is None:
        return None
    changes = changed_arguments(saved, run_args)
    if jax.process_index() == 0:
        for name, before, after in changes:
            console.show(f"changed: --{name} {_shown(before)} -> {_shown(after)}")
    refused = [(name, before, after) for name, before, after in changes
               if restoring and args_lib.kept_on_resume(name, training)]
    if refused:
        named = ", ".join(f"--{name} ({_shown(before)} -> {_shown(after)})"
                          for name, before, after in refused)
        raise OutputDirError(
            f"cannot resume {output_dir} with {named} changed: "
            f"{args_lib.kept_on_resume(refused[0][0], training)}; rerun with the earlier "
            f"value, or use a new --output_dir (or --overwrite_output_dir to start over)")
    return saved


def _shown(value):
    """An argument's value as a command line would spell it."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) and (" " in value or not value) \
        else str(value)


@contextlib.contextmanager
def local_files(output_dir):
    """A local directory whose files end up in output_dir, for writers of local files only.

    A local output_dir is used as it is. For a remote one (gs://), the files
    are written to a temporary directory and copied there, with tf.io.gfile,
    when the block ends: transformers' save_pretrained, for one, writes local
    paths only.
    """
    if not _is_remote(output_dir):
        os.makedirs(output_dir, exist_ok=True)
        yield str(output_dir)
        return
    with tempfile.TemporaryDirectory() as local:
        yield local
        for directory, _, names in os.walk(local):
            relative = os.path.relpath(directory, local)
            target = str(output_dir).rstrip("/") + ("" if relative == "." else f"/{relative}")
            tf.io.gfile.makedirs(target)
            for name in names:
                tf.io.gfile.copy(os.path.join(directory, name), f"{target}/{name}",
                                 overwrite=True)
