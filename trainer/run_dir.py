"""The run's output directory: whose it is, whether it can be written, and its layout.

A directory is this trainer's when it holds RUN_MARKER. The checks run
before anything is written, so a refused directory is left as it was.
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

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_MARKER = "run_args.json"  # written first into every output_dir this trainer uses


class OutputDirError(ValueError):
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
    ocp.multihost.sync_global_processes("claim_output_dir:start")
    if jax.process_index() == 0:
        try:
            if overwrite:
                for name in (CHECKPOINT_DIR, LOG_DIR):
                    if (path / name).exists():
                        (path / name).rmtree()
            path.mkdir(parents=True, exist_ok=True)
            (path / RUN_MARKER).write_text(json.dumps(run_args, indent=2, default=str) + "\n")
        except OSError as error:
            raise OutputDirError(f"output_dir {output_dir} is not writable: "
                                 f"{error.strerror or error}") from error
    ocp.multihost.sync_global_processes("claim_output_dir:done")


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
