"""Runs `train.py` as a real subprocess and reads what it logged, for the end-to-end tests.

Run as a script (`python tests/train_runs.py --pause_in_checkpoint_write CONFIG`) it
trains like `python train.py CONFIG`, except that the second checkpoint it writes
stops, after its input state is written and before Orbax commits the step, and
prints PAUSE_MARKER: a test can then kill the run while the step's directory is
still a temporary one, deterministically and without a sleep in product code.
(The second: a save first waits for the previous one, so by then this run has
committed a checkpoint of its own.)
"""

import json
import os
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAUSE_MARKER = "paused in checkpoint write:"
PAUSE_SECONDS = 300  # a paused run that nobody kills still ends
# Settings of the runs that end-to-end tests repeat per parallelism: the default (pmap), and a
# mesh whose fsdp axis shards the parameters 4 ways (data=2 on 8 devices; both hosts' 4 devices
# in the multi-host test).
PARALLELISM = {"pmap": {}, "mesh": {"parallelism": "mesh", "mesh_shape": "data=-1,fsdp=4"}}
# XLA's CPU backend without LLVM's optimisation passes: the tests' tiny programs compile in
# about 60% of the time and run no slower that matters; the numbers are the same (no fast
# math either way), and every run of a test, in process or not, compiles alike.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices):
    """XLA_FLAGS for a test process with `devices` simulated CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


# The end-to-end tests' model: a one-layer BERT that compiles in seconds on a CPU.
TINY_BERT = ("hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=37,"
             "max_position_embeddings=64")


def tiny_config(corpus_file, tokenizer_dir, **overrides):
    """A config that trains TINY_BERT on the test corpus, plus `overrides`."""
    return {
        "model_type": "bert",
        "config_overrides": TINY_BERT,
        "tokenizer_name": str(tokenizer_dir),
        "train_file": str(corpus_file),
        "max_seq_length": 32,
        "max_predictions_per_seq": 6,
        "shuffle_buffer_size": 200,
        "do_train": True,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        **overrides,
    }


def logged_scalars(output_dir):
    """{tag: {step: value}} of a run's TensorBoard events, read by TensorBoard's own reader."""
    from test_monitoring import read_scalars  # pylint: disable=import-outside-toplevel
    from trainer import run_dir  # pylint: disable=import-outside-toplevel
    return read_scalars(os.path.join(output_dir, run_dir.LOG_DIR))


def write_config(path, config, output_dir):
    """Writes config plus output_dir as a JSON config file; returns its path."""
    path.write_text(json.dumps(dict(config, output_dir=str(output_dir))))
    return str(path)


def command(config_file, *, pause_in_checkpoint_write=False):
    if pause_in_checkpoint_write:
        return [sys.executable, os.path.abspath(__file__), "--pause_in_checkpoint_write",
                config_file]
    return [sys.executable, os.path.join(ROOT, "train.py"), config_file]


def start(config_file, *, env=None, pause_in_checkpoint_write=False, cwd=ROOT):
    """A running training process whose console (stdout and stderr) is read line by line."""
    return subprocess.Popen(
        command(config_file, pause_in_checkpoint_write=pause_in_checkpoint_write),
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env=env)


def run(config_file, timeout=240, *, env=None, cwd=ROOT):
    """(exit code, console) of a whole run."""
    result = subprocess.run(command(config_file), cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    return result.returncode, result.stdout + result.stderr


def run_to_end(directory, config, env=None):
    """(output_dir, console) of a whole run of `config` into directory/run that succeeded."""
    code, console = run(write_config(directory / "config.json", config, directory / "run"),
                        env=env)
    assert code == 0, f"exit status {code}:\n{console[-4000:]}"
    return directory / "run", console


def read_until(process, marker):
    """Reads the run's console until a line starting with `marker`; returns what was read."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(marker):
            return "".join(seen)
    raise AssertionError(f"the run ended before {marker!r}:\n" + "".join(seen)[-3000:])


def finish(process, timeout=120):
    """(exit code, the rest of the console)."""
    rest = process.stdout.read()
    return process.wait(timeout=timeout), rest


def step_losses(logdir, pid):
    """{step: train/loss} from the TensorBoard event file written by process `pid`.

    Each run writes its own event file (named with its pid), so a resumed run's
    losses are told apart from those its killed predecessor logged. Values are
    the float32 TensorBoard stored, so equality is bitwise. `logdir` may be
    gs:// (read through TensorFlow's file system, as TensorBoard reads it).
    """
    # Imported here: run as a script, this module must not load TensorFlow before train.py
    # has set TensorFlow's environment.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorboard.backend.event_processing import (  # pylint: disable=import-outside-toplevel
        event_file_loader)

    names = [n for n in tf.io.gfile.listdir(str(logdir)) if n.startswith("events.out.tfevents.")
             and n.split(".")[-3] == str(pid)]
    assert len(names) == 1, f"expected one event file of process {pid} in {logdir}: {names}"
    losses = {}
    for event in event_file_loader.EventFileLoader(f"{logdir}/{names[0]}").Load():
        for value in event.summary.value:
            if value.tag == "train/loss":
                losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def _pause_second_checkpoint_write():
    """Makes the input-state write of the second checkpoint block once done (see module doc).

    The write runs in Orbax's background thread, so training goes on meanwhile
    until a save or the end of the run waits for it.
    """
    from trainer import checkpoints  # pylint: disable=import-outside-toplevel

    write = checkpoints._write_files  # pylint: disable=protected-access
    writes = []

    def write_then_pause(directory, files):  # directory: the item's process_<i>/
        write(directory, files)
        writes.append(directory)
        if len(writes) == 2:
            sys.stdout.write(f"{PAUSE_MARKER} {directory.parent}\n")  # one write: one line
            sys.stdout.flush()
            threading.Event().wait(PAUSE_SECONDS)

    checkpoints._write_files = write_then_pause  # pylint: disable=protected-access


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    import train  # noqa: E402  (first: it sets TensorFlow's environment before TF loads)

    if sys.argv[1:2] == ["--pause_in_checkpoint_write"]:
        del sys.argv[1]
        _pause_second_checkpoint_write()
    train.run_as_script(sys.argv[1:])
