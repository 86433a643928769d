"""output_dir on gs://, as on a preemptible TPU VM whose local disk dies with it.

Every run is `python train.py` writing to a real fake-gcs-server
(tests/gcs_emulator.py): TensorBoard events and the export through
TensorFlow's GCS filesystem, Orbax's metadata through etils (TensorFlow
again), the arrays through TensorStore, JAX's compilation cache through
etils. Each run starts in an empty working directory of its own, removed
before the next one, so nothing a run leaves on local disk can help the
next. What the runs wrote is read back from the bucket in a fresh process
(`inspect`: TensorBoard's own event reader on gs://, and a copy of the
export down to local disk). All traffic stays on 127.0.0.1.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gcs_emulator import GcsEmulator
from test_train_e2e import assert_transformers_agrees
import train_runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUCKET = "out"
STEPS = 16
SAVE_STEPS = 4
EVAL_STEPS = 8
GRACE_SECONDS = 30  # what a preempted Cloud VM allows after SIGTERM (this CPU is shared)
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "eval_results.json", "run_args.json")
# TensorFlow's retries, quick: a test whose uploads keep failing ends in seconds.
FAST_RETRIES = {"GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
                "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
                "GCS_RETRY_CONFIG_MAX_RETRIES": "3"}


def gs(run):
    return f"gs://{BUCKET}/{run}"


@pytest.fixture(scope="module")
def config(corpus_file, tokenizer_dir):
    return train_runs.tiny_config(
        corpus_file, tokenizer_dir, do_eval=True, max_eval_samples=48,
        per_device_eval_batch_size=2, learning_rate=3e-3, warmup_steps=5, max_steps=STEPS,
        eval_steps=EVAL_STEPS, save_steps=SAVE_STEPS, seed=5)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One emulator with an empty bucket for the module; each test writes its own run."""
    root = tmp_path_factory.mktemp("gcs")
    (root / "buckets" / BUCKET).mkdir(parents=True)
    started = GcsEmulator(root, root / "buckets")
    yield started
    started.close()


@pytest.fixture
def proxy(emulator):
    """The emulator's proxy, its faults reset after the test."""
    yield emulator.proxy
    emulator.proxy.cuts_left = 0
    emulator.proxy.cut_after_bytes = None
    emulator.proxy.partial_uploads = True


class Runs:
    """Starts train.py runs on one gs:// output_dir, each from its own new working directory."""

    def __init__(self, emulator, config, tmp_path, run, cache_in_bucket=True, **env):
        """cache_in_bucket: JAX's compilation cache in the bucket (train.py's default), or
        the test session's local one, where the test is not about it."""
        self.output_dir = gs(run)
        self.tmp_path = tmp_path
        self.config_file = train_runs.write_config(tmp_path / f"{run}.json", config,
                                                   self.output_dir)
        # Small compiled steps are cached too, so that a rerun's cache hit can be seen.
        self.env = dict(emulator.environment(), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        **env)
        if cache_in_bucket:
            self.env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the default: under output_dir
        self.workdir = None
        self.count = 0

    def start(self, pause_in_checkpoint_write=False, **env):
        self._new_workdir()
        return train_runs.start(self.config_file, env=dict(self.env, **env), cwd=self.workdir,
                                pause_in_checkpoint_write=pause_in_checkpoint_write)

    def run(self, **env):
        process = self.start(**env)
        code, console = train_runs.finish(process, timeout=400)
        self.check_local_disk_untouched()
        return process.pid, code, console

    def _new_workdir(self):
        if self.workdir is not None:
            shutil.rmtree(self.workdir)  # the preempted VM's disk is gone
        self.count += 1
        self.workdir = self.tmp_path / f"vm{self.count}"
        self.workdir.mkdir()

    def check_local_disk_untouched(self):
        assert not os.listdir(self.workdir), os.listdir(self.workdir)


def inspect(emulator, tmp_path, logdir=None, pids=(), copy_from=None, runs=None):
    """What a fresh process reads from the bucket (see `main`); with `runs`, its checkpoints."""
    spec = {"logdir": logdir, "pids": list(pids), "copy_from": copy_from,
            "checkpoints": runs and f"{runs.output_dir}/checkpoints",
            "config_file": runs and runs.config_file,
            "copy_to": str(tmp_path / "copied"), "out": str(tmp_path / "inspected.json")}
    (tmp_path / "inspect.json").write_text(json.dumps(spec))
    env = dict(emulator.environment(),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    result = subprocess.run([sys.executable, __file__, str(tmp_path / "inspect.json")], env=env,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(pathlib.Path(spec["out"]).read_text())
    found["scalars"] = {tag: {int(k): v for k, v in values.items()}
                        for tag, values in (found["scalars"] or {}).items()}
    found["losses"] = {int(pid): {int(k): v for k, v in values.items()}
                       for pid, values in found["losses"].items()}
    found["checkpoints"] = {int(k): v for k, v in found["checkpoints"].items()}
    return found


def checkpoint_digests(directory, config_file):
    """{step: digests} of each committed checkpoint: of its train state (restored by Orbax
    without a template), and of the batches its input state yields when restored into the
    run's own pipeline (TensorFlow checks the iterator state's checksums as it reads it)."""
    import jax
    from etils import epath
    import orbax.checkpoint as ocp
    from pipeline import inputs
    from trainer import args as args_lib
    from trainer import checkpoints

    model_args, data_args, training_args = args_lib.parse_args([config_file])
    config = args_lib.data_config(data_args, training_args)
    tokenizer = inputs.load_tokenizer(model_args.tokenizer_name)
    batch = args_lib.per_device_train_batch(training_args, jax.device_count())
    digests = {}
    for step in ocp.path.step.checkpoint_steps(directory):
        state = ocp.StandardCheckpointer().restore(f"{directory}/{step}/state")
        data = checkpoints.DataIterator(inputs.train_dataset(
            config, tokenizer, per_device_batch_size=batch,
            local_device_count=jax.local_device_count()))
        checkpoints.DataIteratorHandler().restore(
            epath.Path(f"{directory}/{step}/data"), checkpoints.DataIteratorRestore(data))
        upcoming = [next(data) for _ in range(len(data.replay) + 1)]  # + one from tf.data
        digests[step] = [checkpoints.fingerprint(state), checkpoints.fingerprint(upcoming)]
    return digests


def main(spec_path):
    """Worker: TensorBoard scalars and per-process losses from a gs:// logdir, checkpoint
    digests, and files copied down."""
    from test_monitoring import read_scalars  # TensorBoard's own event reader
    import tensorflow as tf

    spec = json.loads(pathlib.Path(spec_path).read_text())
    found = {"scalars": None, "losses": {}, "copied": [], "checkpoints": {}}
    if spec["checkpoints"]:
        found["checkpoints"] = checkpoint_digests(spec["checkpoints"], spec["config_file"])
    if spec["logdir"]:
        found["scalars"] = read_scalars(spec["logdir"])
        found["losses"] = {pid: train_runs.step_losses(spec["logdir"], pid)
                           for pid in spec["pids"]}
    if spec["copy_from"]:
        os.makedirs(spec["copy_to"], exist_ok=True)
        for name in EXPORT_FILES:
            tf.io.gfile.copy(f"{spec['copy_from']}/{name}",
                             os.path.join(spec["copy_to"], name), overwrite=True)
            found["copied"].append(name)
    pathlib.Path(spec["out"]).write_text(json.dumps(found))


def step_objects(emulator, run):
    """{step: the names of its objects, relative to the step} under the run's checkpoints/."""
    steps, prefix = {}, f"{run}/checkpoints/"
    for name in emulator.objects(BUCKET, prefix):
        step, _, rest = name[len(prefix):].partition("/")
        if step.isdigit():
            steps.setdefault(int(step), set()).add(rest)
    return steps


def committed(emulator, run):
    """Steps whose checkpoint Orbax committed to the bucket (its commit_success.txt marker)."""
    return sorted(step for step, names in step_objects(emulator, run).items()
                  if "commit_success.txt" in names)


def resumed_from(console):
    found = re.search(r"Resuming from the checkpoint of step (\d+) in (\S+)", console)
    return (int(found.group(1)), found.group(2)) if found else None


@pytest.fixture(scope="module")
def uninterrupted(emulator, config, tmp_path_factory):
    """A whole run on gs://out/whole, and what the bucket holds afterwards."""
    tmp_path = tmp_path_factory.mktemp("whole")
    runs = Runs(emulator, config, tmp_path, "whole")
    pid, code, console = runs.run()
    assert code == 0, console[-4000:]
    found = inspect(emulator, tmp_path, logdir=f"{runs.output_dir}/logs", pids=[pid],
                    copy_from=runs.output_dir, runs=runs)
    return found, console, tmp_path / "copied"


@pytest.mark.slow
def test_run_on_gs_trains_evaluates_logs_checkpoints_and_exports(emulator, uninterrupted):
    found, console, _ = uninterrupted
    scalars = found["scalars"]
    assert sorted(scalars["train/loss"]) == list(range(1, STEPS + 1))
    assert sorted(scalars["eval/loss"]) == [EVAL_STEPS, STEPS]
    assert committed(emulator, "whole") == list(range(SAVE_STEPS, STEPS + 1, SAVE_STEPS))
    objects = emulator.objects(BUCKET, "whole/")
    assert any(name.startswith("whole/checkpoints/16/state/") and size > 100_000
               for name, size in objects.items()), "no array data (TensorStore) in the bucket"
    assert any(name.startswith("whole/compilation_cache/") for name in objects), sorted(objects)
    assert f"Exported the model and tokenizer (Hugging Face format) to {gs('whole')}" in console
    assert "Traceback" not in console


@pytest.mark.slow
def test_export_in_the_bucket_loads_in_transformers(uninterrupted):
    found, _, local = uninterrupted
    results = json.loads((local / "eval_results.json").read_text())
    assert results["step"] == STEPS
    assert results["eval_loss"] == pytest.approx(found["scalars"]["eval/loss"][STEPS], rel=1e-6)
    assert json.loads((local / "run_args.json").read_text())["output_dir"] == gs("whole")
    assert_transformers_agrees(str(local))


@pytest.mark.slow
def test_preempted_run_resumes_from_the_bucket_with_the_same_losses(
        emulator, config, tmp_path, uninterrupted):
    """Kill mid checkpoint write, resume, SIGTERM, resume: each on a new "VM", bitwise equal."""
    expected = uninterrupted[0]["scalars"]
    runs = Runs(emulator, config, tmp_path, "preempted")

    # Killed while its second checkpoint is being written to the bucket.
    process = runs.start(pause_in_checkpoint_write=True)
    console = train_runs.read_until(process, train_runs.PAUSE_MARKER)
    process.kill()
    code, _ = train_runs.finish(process)
    assert code == -signal.SIGKILL
    paused = int(console.split(train_runs.PAUSE_MARKER)[1].split("/checkpoints/")[1]
                 .split("/")[0])
    assert paused == 2 * SAVE_STEPS and paused in step_objects(emulator, "preempted")
    assert committed(emulator, "preempted") == [SAVE_STEPS], "the killed write was committed"
    runs.check_local_disk_untouched()

    # A new VM resumes from the previous checkpoint; SIGTERM (the preemption notice) saves.
    process = runs.start()
    console = train_runs.read_until(process, f"train {SAVE_STEPS + 3}/")
    assert resumed_from(console) == (SAVE_STEPS, f"{gs('preempted')}/checkpoints"), console
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, rest = train_runs.finish(process)
    assert code == 128 + signal.SIGTERM, rest[-3000:]
    assert time.monotonic() - signalled < GRACE_SECONDS
    stopped_at = int(rest.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert SAVE_STEPS + 3 <= stopped_at < STEPS
    assert committed(emulator, "preempted")[-1] == stopped_at
    assert "Traceback" not in rest
    terminated = process.pid
    runs.check_local_disk_untouched()

    # Another new VM finishes the run; its compiled steps come from the bucket's cache.
    pid, code, console = runs.run(JAX_LOG_COMPILES="1")
    assert code == 0, console[-4000:]
    assert resumed_from(console) == (stopped_at, f"{gs('preempted')}/checkpoints")
    assert "Persistent compilation cache hit" in console, console[-4000:]
    found = inspect(emulator, tmp_path, logdir=f"{runs.output_dir}/logs",
                    pids=[terminated, pid])
    assert found["losses"][terminated] == {
        step: expected["train/loss"][step] for step in range(SAVE_STEPS + 1, stopped_at + 1)}
    assert found["losses"][pid] == {
        step: expected["train/loss"][step] for step in range(stopped_at + 1, STEPS + 1)}
    assert found["scalars"]["eval/loss"][STEPS] == expected["eval/loss"][STEPS]


@pytest.mark.slow
def test_uploads_cut_mid_transfer_are_retried(emulator, proxy, config, tmp_path, uninterrupted):
    # Every other connection that uploads more than 32 kB is cut there, TensorStore's too.
    proxy.direction, proxy.tunnels_only, proxy.cut_every = "upload", False, 2
    proxy.cut_after_bytes, proxy.cuts_left = 32_000, 10**9
    before = dict(proxy.cuts_by_entrance)
    runs = Runs(emulator, config, tmp_path, "cut", cache_in_bucket=False, **FAST_RETRIES)
    pid, code, console = runs.run()
    assert code == 0, console[-4000:]
    proxy.cuts_left = 0
    cuts = {name: count - before[name] for name, count in proxy.cuts_by_entrance.items()}
    assert cuts["tunnel"] >= 2 and cuts["plain"] >= 2, cuts
    found = inspect(emulator, tmp_path, logdir=f"{runs.output_dir}/logs", pids=[pid],
                    runs=runs)
    assert found["losses"][pid] == uninterrupted[0]["scalars"]["train/loss"]
    # Every checkpoint is whole: the same bytes as the uninterrupted run's.
    assert found["checkpoints"] == uninterrupted[0]["checkpoints"]
    assert sorted(found["checkpoints"]) == list(range(SAVE_STEPS, STEPS + 1, SAVE_STEPS))


@pytest.mark.slow
def test_uploads_that_keep_failing_stop_the_run_naming_the_bucket_path(
        emulator, proxy, config, tmp_path, uninterrupted):
    runs = Runs(emulator, config, tmp_path, "failing", cache_in_bucket=False, **FAST_RETRIES)
    process = runs.start()
    train_runs.read_until(process, f"train {SAVE_STEPS + 1}/")
    deadline = time.monotonic() + 60
    while committed(emulator, "failing") != [SAVE_STEPS]:
        assert time.monotonic() < deadline and process.poll() is None, "no first checkpoint"
        time.sleep(0.05)
    # From now on, every TensorFlow upload of more than 256 kB (the input state of a
    # checkpoint is about 1 MB) is cut before the emulator gets any of it, so that its
    # resumable upload cannot progress; TensorStore's are left alone (it retries for minutes).
    proxy.direction, proxy.tunnels_only, proxy.partial_uploads = "upload", True, False
    proxy.cut_every, proxy.cut_after_bytes, proxy.cuts_left = 1, 256_000, 10**9
    code, rest = train_runs.finish(process)
    proxy.cuts_left = 0
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, rest[-4000:]
    assert f"{gs('failing')}/checkpoints" in errors[0], errors[0]
    assert f"the checkpoint of step {SAVE_STEPS} is kept" in errors[0], errors[0]
    assert "Traceback" not in rest, rest[-4000:]
    assert committed(emulator, "failing") == [SAVE_STEPS]

    # The kept checkpoint is usable: a rerun resumes from it and trains as if never stopped.
    pid, code, console = runs.run()
    assert code == 0, console[-4000:]
    assert resumed_from(console) == (SAVE_STEPS, f"{gs('failing')}/checkpoints")
    found = inspect(emulator, tmp_path, logdir=f"{runs.output_dir}/logs", pids=[pid])
    expected = uninterrupted[0]["scalars"]["train/loss"]
    assert found["losses"][pid] == {step: expected[step]
                                    for step in range(SAVE_STEPS + 1, STEPS + 1)}


if __name__ == "__main__":
    main(sys.argv[1])
