"""Faults a long run meets, each provoked for real: real signals, real Orbax, real mounts.

SIGKILL at random steps, a kill in the middle of a checkpoint write, SIGTERM
(preemption), a diverging loss, a full disk and a read-only output_dir. One
uninterrupted reference run is shared; the interrupted runs are `python
train.py` subprocesses going through one output_dir in a chain (kill, resume,
kill, ...), each resumed run compared step by step, bitwise, with the
reference. Where a subprocess is not the point (the loss, the read-only
directory), train.main runs in this process.

Grace period: after SIGTERM the run saves a checkpoint of the step it is in and
exits (status 143 = 128 + SIGTERM) within GRACE_SECONDS, the time a preempted
VM has, with the machine's cores busy with other work too (the tests run
beside each other).
Other exit statuses: 1 with one `error: ...` line for a diverged loss, a full
disk or an unwritable output_dir; a SIGKILLed run leaves the last committed
checkpoint, which the rerun resumes from.
"""

import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from trainer import checkpoints, run_dir

import train_runs

STEPS = 40
SAVE_STEPS = 4
GRACE_SECONDS = 30  # what a preempted Cloud VM (and Kubernetes, by default) allows after SIGTERM
KILL_SEED = 20240601  # the kill points are random, and the same on every run of the test
SIGKILLS = 3


@pytest.fixture(scope="module")
def config(corpus_file, tokenizer_dir):
    return train_runs.tiny_config(corpus_file, tokenizer_dir, learning_rate=3e-3, warmup_steps=5,
                                  max_steps=STEPS, save_steps=SAVE_STEPS, seed=3)


def run(config_file):
    """(pid, exit code, console) of a whole `python train.py` run."""
    process = train_runs.start(config_file)
    code, console = train_runs.finish(process, timeout=300)
    return process.pid, code, console


def run_in_process(config_file):
    """(exit code, stderr) of train.main in this process, where a subprocess is not the point.

    Anything but a clean return or a SystemExit (a traceback, for a user) fails the test.
    """
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            train.main([config_file])
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return code, stderr.getvalue()


def committed_steps(output_dir):
    """Steps whose checkpoint Orbax committed (renamed from its temporary name); reads only."""
    directory = output_dir / run_dir.CHECKPOINT_DIR
    if not directory.exists():
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def resumed_from(console):
    found = re.search(r"Resuming from the checkpoint of step (\d+)", console)
    return int(found.group(1)) if found else 0


def error_lines(console):
    return [line for line in console.splitlines() if line.startswith("error:")]


def stored_params(output_dir, step):
    """The parameters of a committed checkpoint, read by Orbax without a template."""
    path = output_dir / run_dir.CHECKPOINT_DIR / str(step) / "state"
    return ocp.StandardCheckpointer().restore(path)["params"]


def assert_same_values(tree, expected):
    assert jax.tree.structure(tree) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want)


def all_finite(tree):
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    """(output_dir, {step: loss}) of the uninterrupted run (in process: the same computation)."""
    out = tmp_path_factory.mktemp("reference")
    output_dir = out / "run"
    code, stderr = run_in_process(train_runs.write_config(out / "config.json", config,
                                                          output_dir))
    assert code == 0, stderr[-4000:]
    losses = train_runs.step_losses(output_dir / run_dir.LOG_DIR, os.getpid())
    assert sorted(losses) == list(range(1, STEPS + 1))
    return output_dir, losses


class Chain:
    """Runs of one output_dir, each interrupted one way, each resuming the one before."""

    def __init__(self, config_file, output_dir):
        self.config_file, self.output_dir = config_file, output_dir
        self.runs = []

    def run(self, kind, at_step=None):
        """kind: 'sigkill' or 'sigterm' after `at_step`, 'write' (SIGKILL mid-checkpoint), 'end'."""
        process = train_runs.start(self.config_file,
                                   pause_in_checkpoint_write=kind == "write")
        record = {"kind": kind, "pid": process.pid, "at_step": at_step}
        if kind == "write":
            console = train_runs.read_until(process, train_runs.PAUSE_MARKER)
            record["paused_in"] = console.splitlines()[-1].split()[-1]
            record["listing"] = sorted(os.listdir(self.output_dir / run_dir.CHECKPOINT_DIR))
            process.kill()
        elif kind in ("sigkill", "sigterm"):
            console = train_runs.read_until(process, f"train {at_step}/")
            process.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
        else:
            console = ""
        signalled = time.monotonic()
        record["code"], rest = train_runs.finish(process, timeout=300)
        record["exit_seconds"] = time.monotonic() - signalled
        record["console"] = console + rest
        record["resumed_from"] = resumed_from(record["console"])
        record["committed"] = committed_steps(self.output_dir)
        record["losses"] = train_runs.step_losses(self.output_dir / run_dir.LOG_DIR,
                                                  process.pid)
        self.runs.append(record)
        return record


@pytest.fixture(scope="module")
def chain(tmp_path_factory, config, reference):
    """SIGKILL at 3 random steps, SIGKILL mid-write, SIGTERM at a random step, then the end.

    Each kill point is a seeded-random 1..2*SAVE_STEPS steps past the step the run
    resumed from, so kills land before, at and after checkpoint steps.
    """
    del reference  # built first, so that its failure is reported as such
    rng = random.Random(KILL_SEED)
    out = tmp_path_factory.mktemp("chain")
    runs = Chain(train_runs.write_config(out / "config.json", config, out / "run"),
                 out / "run")
    start = 0
    for _ in range(SIGKILLS):
        start = max(runs.run("sigkill", start + rng.randint(1, 2 * SAVE_STEPS))["committed"],
                    default=0)
    runs.run("write")
    start = max(runs.runs[-1]["committed"], default=0)
    runs.run("sigterm", start + rng.randint(1, SAVE_STEPS))
    runs.run("end")
    return runs.runs


@pytest.mark.slow
def test_sigkill_at_random_steps_resumes_with_bitwise_equal_losses(chain, reference):
    expected = reference[1]
    kills = [r for r in chain if r["kind"] == "sigkill"]
    assert len(kills) == SIGKILLS and len({r["at_step"] for r in kills}) > 1
    for before, after in zip(chain, chain[1:]):
        if before["kind"] == "sigkill":
            assert before["code"] == -signal.SIGKILL, "the run ended before it was killed"
        # The resume starts at the last committed checkpoint, whatever the kill interrupted.
        assert after["resumed_from"] == max(before["committed"], default=0), after["console"]
    for record in chain[1:]:
        losses = record["losses"]
        assert losses, record["console"][-3000:]
        assert min(losses) == record["resumed_from"] + 1
        for step, loss in losses.items():
            assert loss == expected[step], (record["kind"], step, loss, expected[step])
    final = chain[-1]
    assert final["code"] == 0 and max(final["losses"]) == STEPS, final["console"][-3000:]


@pytest.mark.slow
def test_kill_during_checkpoint_write_resumes_from_the_previous_checkpoint(chain):
    index = next(i for i, r in enumerate(chain) if r["kind"] == "write")
    killed, resumed = chain[index], chain[index + 1]
    step_dir = os.path.basename(os.path.dirname(killed["paused_in"]))
    step = int(step_dir.split(".")[0])
    assert "orbax-checkpoint-tmp" in step_dir, killed["paused_in"]
    assert step_dir in killed["listing"] and str(step) not in killed["listing"]
    assert killed["code"] == -signal.SIGKILL
    # The killed run had committed one checkpoint of its own before the one it was killed in.
    previous = max(killed["committed"])
    assert killed["resumed_from"] < previous < step
    assert resumed["resumed_from"] == previous
    assert f"Resuming from the checkpoint of step {previous}" in resumed["console"]
    # The rerun cleaned the uncommitted directory away and went on past it.
    directory = os.path.dirname(os.path.dirname(killed["paused_in"]))
    assert step_dir not in os.listdir(directory)
    assert max(resumed["losses"]) > step


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_within_the_grace_period(chain):
    index = next(i for i, r in enumerate(chain) if r["kind"] == "sigterm")
    stopped, resumed = chain[index], chain[index + 1]
    console = stopped["console"]
    assert stopped["code"] == 128 + signal.SIGTERM, console[-3000:]
    assert stopped["exit_seconds"] < GRACE_SECONDS, stopped["exit_seconds"]
    step = int(re.search(r"stopped by SIGTERM after step (\d+);", console).group(1))
    assert step >= stopped["at_step"]
    assert f"saved the checkpoint of step {step}." in console
    assert max(stopped["committed"]) == step and max(stopped["losses"]) == step
    assert resumed["resumed_from"] == step
    assert "Traceback" not in console
    print(f"SIGTERM to exit, checkpoint of step {step} committed: "
          f"{stopped['exit_seconds']:.2f} s")


@pytest.mark.slow
def test_sigterm_during_an_evaluation_cuts_it_short_and_saves(tmp_path, config,
                                                              corpus_file):
    """Mid-training and final evaluations of the whole corpus each take seconds."""
    output_dir = tmp_path / "run"
    config_file = train_runs.write_config(tmp_path / "config.json", dict(
        config, max_steps=6, save_steps=100, do_eval=True, eval_steps=3,
        validation_file=str(corpus_file), per_device_eval_batch_size=2), output_dir)

    def sigterm_in_eval(step):
        process = train_runs.start(config_file)
        console = train_runs.read_until(process, f"Evaluating at step {step}")
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code, rest = train_runs.finish(process, timeout=300)
        return code, time.monotonic() - signalled, console + rest

    code, seconds, console = sigterm_in_eval(3)
    assert code == 128 + signal.SIGTERM, console[-3000:]
    assert seconds < GRACE_SECONDS
    assert "stopped by SIGTERM after step 3; saved the checkpoint of step 3." in console
    assert "eval at step 3:" not in console and committed_steps(output_dir) == [3]

    code, seconds, console = sigterm_in_eval(6)  # the final evaluation
    assert code == 128 + signal.SIGTERM, console[-3000:]
    assert seconds < GRACE_SECONDS and resumed_from(console) == 3
    assert ("stopped by SIGTERM during the evaluation at step 6; saved the checkpoint of "
            "step 6. Rerun the same command to evaluate and export.") in console
    assert not (output_dir / "model.safetensors").exists()

    # The rerun evaluates a part of the corpus (a validation setting a resume may change):
    # what is tested is that it resumes, evaluates and exports.
    rerun_file = train_runs.write_config(tmp_path / "rerun.json", dict(
        json.loads((tmp_path / "config.json").read_text()), max_eval_samples=64), output_dir)
    process = train_runs.start(rerun_file)
    code, console = train_runs.finish(process, timeout=300)
    assert code == 0, console[-3000:]
    assert resumed_from(console) == 6 and "eval at step 6:" in console
    assert (output_dir / "model.safetensors").exists()
    assert "Traceback" not in console


STEPS_SKIPPED_FROM = 2  # with absurd_learning_rate, step 2 is the first non-finite one


def absurd_learning_rate(config, tmp_path, name, **overrides):
    """A run whose second step's loss is NaN: after one 1e30 step the logits overflow."""
    output_dir = tmp_path / name
    settings = dict(config, learning_rate=1e30, warmup_steps=0, max_steps=6, save_steps=1,
                    **overrides)
    return output_dir, train_runs.write_config(tmp_path / f"{name}.json", settings, output_dir)


@pytest.fixture(scope="module", params=sorted(train_runs.PARALLELISM))
def diverged(request, tmp_path_factory, config):
    """The diverging run, under pmap and on a mesh: (output_dir, exit code, stderr, settings)."""
    settings = train_runs.PARALLELISM[request.param]
    output_dir, config_file = absurd_learning_rate(config, tmp_path_factory.mktemp("nan"),
                                                   "diverged", **settings)
    code, stderr = run_in_process(config_file)
    return output_dir, code, stderr, settings


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(diverged):
    output_dir, code, stderr, _ = diverged
    assert code == 1, stderr[-3000:]
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr[-3000:]
    found = re.fullmatch(r"error: the training loss is nan at step (\d+); stopped, keeping "
                         r"the checkpoint of step (\d+)", errors[0])
    assert found, errors[0]
    bad, kept = int(found.group(1)), int(found.group(2))
    assert kept == bad - 1  # save_steps=1: every good step was saved, the bad one never
    assert committed_steps(output_dir) == list(range(1, bad))
    names = os.listdir(output_dir / run_dir.CHECKPOINT_DIR)
    assert not [n for n in names if n.split(".")[0] == str(bad)], names
    assert all_finite(stored_params(output_dir, kept))


@pytest.mark.slow
def test_skip_nonfinite_updates_continues_and_counts_them(tmp_path, config, diverged):
    from test_monitoring import read_scalars  # pylint: disable=import-outside-toplevel

    output_dir, config_file = absurd_learning_rate(config, tmp_path, "skipping",
                                                   skip_nonfinite_updates=True, **diverged[3])
    code, stderr = run_in_process(config_file)
    assert code == 0, stderr[-3000:]
    counted = read_scalars(output_dir / run_dir.LOG_DIR)["train/nonfinite_updates"]
    assert counted[1] == 0 and counted[STEPS_SKIPPED_FROM] == 1
    skipped = [step for step, count in counted.items() if count]
    assert skipped == list(range(STEPS_SKIPPED_FROM, 7))
    # Every update after the first was skipped: the parameters are still step 1's, the
    # same as the diverged run's last good checkpoint, and finite.
    final = stored_params(output_dir, 6)
    assert all_finite(final)
    assert_same_values(final, stored_params(diverged[0], 1))


def mount(*args):
    """Runs mount(8); skips the test where this process may not mount (not root)."""
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        pytest.skip(f"mount {' '.join(args)} is not permitted here ({result.stderr.strip()}): "
                    "a full disk or a read-only directory needs root (CAP_SYS_ADMIN) to make")


def umount(path):
    subprocess.run(["umount", str(path)], check=True)


def directory_bytes(path):
    return sum(os.stat(os.path.join(root, f)).st_blocks * 512
               for root, _, files in os.walk(path) for f in files)


@pytest.mark.slow
def test_full_disk_is_one_error_line_and_leaves_only_complete_checkpoints(
        tmp_path, config, reference):
    """A subprocess: the point is the whole console a user sees, Orbax's threads included."""
    reference_dir = reference[0]
    checkpoint_bytes = directory_bytes(
        reference_dir / run_dir.CHECKPOINT_DIR / str(SAVE_STEPS))
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for the run's small files and one checkpoint and a half: the second cannot fit.
    size_kb = (checkpoint_bytes * 3 // 2 + 256 * 1024) // 1024
    mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk))
    try:
        output_dir = disk / "run"
        config_file = train_runs.write_config(tmp_path / "config.json", config, output_dir)
        _, code, console = run(config_file)
        assert code == 1, console[-3000:]
        errors = error_lines(console)
        assert len(errors) == 1, console[-3000:]
        # Orbax's background threads log the failure with tracebacks; none reaches the console.
        assert "Traceback" not in console and "ERROR:" not in console, console[-3000:]
        assert errors[0] == (
            f"error: could not write the checkpoint of step {2 * SAVE_STEPS} to "
            f"{output_dir / run_dir.CHECKPOINT_DIR}: No space left on device; the "
            f"checkpoint of step {SAVE_STEPS} is kept and a rerun resumes from it"), errors[0]
        # The partial step stays under its temporary name: what a rerun sees is step 4 only.
        names = os.listdir(output_dir / run_dir.CHECKPOINT_DIR)
        assert [n for n in names if n.startswith(f"{2 * SAVE_STEPS}.")], names
        assert committed_steps(output_dir) == [SAVE_STEPS]
        mount("-o", f"remount,size={size_kb * 8}k", str(disk))  # the user frees some space
        ckpt = checkpoints.Checkpoints(output_dir)
        try:
            assert ckpt.all_steps() == [SAVE_STEPS]
        finally:
            ckpt.close()
        assert_same_values(stored_params(output_dir, SAVE_STEPS),
                           stored_params(reference_dir, SAVE_STEPS))
    finally:
        umount(disk)


@pytest.mark.parametrize("where", ["output_dir", "parent"])
def test_read_only_output_dir_is_one_error_line_before_any_work(tmp_path, config, capfd, where):
    """In process: the run must stop at its start, so no train.py subprocess is needed."""
    source, read_only = tmp_path / "source", tmp_path / "read_only"
    source.mkdir()
    read_only.mkdir()
    mount("--bind", str(source), str(read_only))
    try:
        mount("-o", "remount,bind,ro", str(read_only))
        output_dir = read_only if where == "output_dir" else read_only / "run"
        config_file = train_runs.write_config(tmp_path / "config.json", config, output_dir)
        with pytest.raises(SystemExit) as exit_info:
            train.main([config_file])
        assert exit_info.value.code == 1
        out, err = capfd.readouterr()
        assert err.strip().splitlines() == [
            f"error: output_dir {output_dir} is not writable: Read-only file system"], err
        assert "Training" not in out
        assert os.listdir(source) == []
    finally:
        umount(read_only)
