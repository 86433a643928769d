"""Two train.py processes on one machine forming one JAX cluster, on uneven data.

Each process has 2 CPU devices; they join through `jax.distributed` on
127.0.0.1 (gloo collectives), so the step runs on 4 devices across both: the
pmapped one, and the jitted one on a mesh whose fsdp axis spans both
processes (every test of the cluster run runs for both). The data is
deliberately uneven: 3 training files and 3 validation files of different
lengths over 2 hosts, and no max_steps, so the shorter host runs out of its
shard first. The files are gzipped: hosts take whole compressed files, where
uncompressed ones would be shared out evenly by blocks (pipeline/blocks.py).
One shared cluster run serves every
assertion: it is killed (SIGKILL, both processes) after its first
checkpoint and rerun to the end. Every subprocess has a timeout, so a hang
fails the test instead of blocking CI.
"""

import collections
import dataclasses
import gzip
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import model
from pipeline import config as config_lib
from pipeline import inputs, sources
from trainer import checkpoints, run_dir

import train_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = 2
DEVICES_PER_HOST = 2
PER_DEVICE_BATCH = 2
HOST_BATCH = DEVICES_PER_HOST * PER_DEVICE_BATCH
# Line counts, multiples of HOST_BATCH so that per-host batch counts add up exactly. Host 0
# reads files 0 and 2, host 1 file 1: 300 lines against 120, and 44 against 12.
TRAIN_LINES = (240, 120, 60)
VALIDATION_LINES = (32, 12, 12)
STEPS = (TRAIN_LINES[0] + TRAIN_LINES[2]) // HOST_BATCH  # one epoch of the longest shard
EVAL_STEPS = 30
TIMEOUT = 240  # seconds for a whole cluster run; far above its ~40 s


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus_file):
    """Train and validation files of distinct corpus lines, and the lines of each split."""
    path = tmp_path_factory.mktemp("multihost_data")
    lines = iter(dict.fromkeys(corpus_file.read_text(encoding="utf-8").splitlines()))
    split_lines = {}
    for split, sizes in (("train", TRAIN_LINES), ("valid", VALIDATION_LINES)):
        split_lines[split] = []
        for i, size in enumerate(sizes):
            part = [next(lines) for _ in range(size)]
            (path / f"{split}{i}.txt.gz").write_bytes(
                gzip.compress("".join(f"{x}\n" for x in part).encode("utf-8")))
            split_lines[split] += part
    return {"dir": path, "lines": split_lines}


@pytest.fixture(scope="module")
def data_config(data):
    return config_lib.DataConfig(
        train_file=str(data["dir"] / "train*.txt.gz"),
        validation_file=str(data["dir"] / "valid*.txt.gz"),
        line_by_line=True, max_seq_length=32, max_predictions_per_seq=6,
        shuffle_buffer_size=100, seed=3)


def host_lines(config, split, process_index):
    ds = sources.line_batches(config, split, process_index=process_index, process_count=HOSTS)
    return [x.decode("utf-8") for batch in ds for x in batch["text"].numpy()]


@pytest.mark.parametrize("split, name", [("train", "train"), ("validation", "valid")])
def test_hosts_read_disjoint_shards_whose_union_is_the_corpus(data, data_config, split, name):
    shards = [host_lines(data_config, split, i) for i in range(HOSTS)]
    assert not set(shards[0]) & set(shards[1])
    assert collections.Counter(shards[0] + shards[1]) == collections.Counter(data["lines"][name])
    assert len(shards[0]) != len(shards[1])  # uneven, as the cluster run needs


def eval_weights(config, tokenizer, process_index=0, process_count=1, num_batches=None):
    """Predicted-token weight of each eval batch on one host."""
    ds = inputs.eval_dataset(config, tokenizer, per_device_batch_size=PER_DEVICE_BATCH,
                             local_device_count=DEVICES_PER_HOST, process_index=process_index,
                             process_count=process_count, num_batches=num_batches)
    return [float(batch["masked_weights"].numpy().sum()) for batch in ds]


def single_host_predicted_tokens(config, tokenizer):
    return sum(eval_weights(config, tokenizer))


def test_uneven_validation_shards_give_every_host_the_same_batches(data_config, tokenizer):
    counts = [inputs.count_eval_batches(data_config, tokenizer,
                                        per_device_batch_size=PER_DEVICE_BATCH,
                                        local_device_count=DEVICES_PER_HOST, process_index=i,
                                        process_count=HOSTS) for i in range(HOSTS)]
    assert counts == [(VALIDATION_LINES[0] + VALIDATION_LINES[2]) // HOST_BATCH,
                      VALIDATION_LINES[1] // HOST_BATCH]
    hosts = [eval_weights(data_config, tokenizer, i, HOSTS, num_batches=max(counts))
             for i in range(HOSTS)]
    assert [len(h) for h in hosts] == [max(counts)] * HOSTS
    assert not any(hosts[1][counts[1]:])  # the shorter host's extra batches weigh nothing
    # Predictions per example depend only on its length, so the hosts' total is the
    # single-host one exactly when every example is counted once.
    assert sum(hosts[0]) + sum(hosts[1]) == single_host_predicted_tokens(data_config, tokenizer)


# The cluster run.

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_configs(directory, data_config, tokenizer_dir, output_dir, settings=None):
    base = {
        "model_type": "bert",
        "config_overrides": (train_runs.TINY_BERT
                             + ",hidden_dropout_prob=0,attention_probs_dropout_prob=0"),
        "tokenizer_name": str(tokenizer_dir),
        "train_file": data_config.train_file,
        "validation_file": data_config.validation_file,
        "line_by_line": True,
        "max_seq_length": data_config.max_seq_length,
        "max_predictions_per_seq": data_config.max_predictions_per_seq,
        "shuffle_buffer_size": data_config.shuffle_buffer_size,
        "seed": data_config.seed,
        "do_train": True,
        "do_eval": True,
        "per_device_train_batch_size": PER_DEVICE_BATCH,
        "per_device_eval_batch_size": PER_DEVICE_BATCH,
        "learning_rate": 3e-3,
        "num_train_epochs": 1,  # and no max_steps: the counting pass meets the uneven shards
        "logging_steps": 5,
        "save_steps": 10,
        "eval_steps": EVAL_STEPS,
        "output_dir": str(output_dir),
        "coordinator_address": f"127.0.0.1:{free_port()}",
        "num_processes": HOSTS,
        **(settings or {}),
    }
    paths = []
    for i in range(HOSTS):
        paths.append(directory / f"process_{i}.json")
        paths[-1].write_text(json.dumps(dict(base, process_id=i)))
    return paths


def start_cluster(directory, data_config, tokenizer_dir, output_dir, env, name, settings=None):
    procs = []
    for i, config_file in enumerate(
            write_configs(directory, data_config, tokenizer_dir, output_dir, settings)):
        log = open(directory / f"{name}_{i}.log", "w", encoding="utf-8")
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), str(config_file)], cwd=ROOT,
            env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def committed_steps(output_dir):
    """Checkpoint steps Orbax has finished (a step's directory appears by an atomic rename)."""
    directory = output_dir / run_dir.CHECKPOINT_DIR
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def finish(procs, until=None):
    """Waits for the processes (or until `until()` holds, then SIGKILLs them); kills on timeout."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p in procs):
            if until is not None and until():
                for p in procs:
                    p.send_signal(signal.SIGKILL)
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster run did not finish within {TIMEOUT} s (a hang?)")
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [p.returncode for p in procs]


def cluster_env():
    return dict(os.environ,
                XLA_FLAGS=train_runs.xla_flags(DEVICES_PER_HOST),
                JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module", params=sorted(train_runs.PARALLELISM))
def cluster(request, tmp_path_factory, data_config, tokenizer_dir):
    """Run 1 killed after its first checkpoint, run 2 resumed to the end: logs, pids, dirs."""
    directory = tmp_path_factory.mktemp(f"multihost_run_{request.param}")
    output_dir = directory / "out"
    env = cluster_env()
    runs = []
    for name, until in (("killed", lambda: committed_steps(output_dir)), ("resumed", None)):
        procs = start_cluster(directory, data_config, tokenizer_dir, output_dir, env, name,
                              train_runs.PARALLELISM[request.param])
        codes = finish(procs, until)
        runs.append({
            "returncodes": codes,
            "pids": [p.pid for p in procs],
            "logs": [(directory / f"{name}_{i}.log").read_text("utf-8") for i in range(HOSTS)],
            "committed": committed_steps(output_dir),
        })
    return {"killed": runs[0], "resumed": runs[1], "output_dir": output_dir}


def eval_values(log):
    return [float(x) for x in re.findall(r"eval/predicted_tokens=([\d.]+)", log)]


def check_finished(cluster):
    resumed = cluster["resumed"]
    tails = "\n".join(log[-3000:] for log in resumed["logs"])
    assert resumed["returncodes"] == [0] * HOSTS, tails


@pytest.mark.slow
def test_uneven_hosts_train_and_evaluate_to_the_end(cluster):
    check_finished(cluster)
    with open(cluster["output_dir"] / "eval_results.json", encoding="utf-8") as f:
        results = json.load(f)
    assert results["step"] == STEPS  # the longest shard's epoch; the shorter one wrapped
    evals = [eval_values(log) for log in cluster["resumed"]["logs"]]
    assert evals[0] and len(evals[0]) == len(evals[1])


@pytest.mark.slow
def test_each_host_trains_on_its_own_shard(cluster, data_config, tokenizer):
    check_finished(cluster)
    expected = []
    for i in range(HOSTS):
        epoch = inputs.train_dataset(data_config, tokenizer, per_device_batch_size=PER_DEVICE_BATCH,
                                     local_device_count=DEVICES_PER_HOST, process_index=i,
                                     process_count=HOSTS, num_epochs=1)
        expected.append(sum(1 for _ in epoch))
    assert expected == [STEPS, TRAIN_LINES[1] // HOST_BATCH]
    for run in ("killed", "resumed"):
        for i, log in enumerate(cluster[run]["logs"]):
            counted = re.findall(rf"process {i} of {HOSTS}: (\d+) training batches", log)
            assert counted == [str(expected[i])], log[-3000:]


@pytest.mark.slow
def test_evaluation_counts_every_example_once(cluster, data_config, tokenizer):
    check_finished(cluster)
    with open(cluster["output_dir"] / "eval_results.json", encoding="utf-8") as f:
        results = json.load(f)
    expected = single_host_predicted_tokens(data_config, tokenizer)
    assert results["eval_predicted_tokens"] == expected
    start = cluster["killed"]["committed"][-1]
    evals = len(range(start + EVAL_STEPS - start % EVAL_STEPS, STEPS, EVAL_STEPS)) + 1
    for log in cluster["resumed"]["logs"]:  # process 1 logs the same (global) metrics
        assert eval_values(log) == [expected] * evals


@pytest.mark.slow
def test_the_run_resumes_from_its_checkpoint(cluster):
    check_finished(cluster)
    killed, resumed = cluster["killed"], cluster["resumed"]
    assert killed["returncodes"] == [-signal.SIGKILL] * HOSTS, "the first run ended by itself"
    assert killed["committed"], "the killed run left no checkpoint"
    step = killed["committed"][-1]
    assert 0 < step < STEPS
    for log in resumed["logs"]:
        assert re.findall(r"Resuming from the checkpoint of step (\d+)", log) == [str(step)]
        assert f"Training {STEPS - step} steps" in log
    assert resumed["committed"][-1] == STEPS


def train_losses(log):
    return [float(x) for x in re.findall(r"train/loss=([^,\s]+)", log)]


@pytest.mark.slow
def test_losses_are_finite_and_the_hosts_parameters_identical(cluster):
    check_finished(cluster)
    for run in ("killed", "resumed"):
        losses = [train_losses(log) for log in cluster[run]["logs"]]
        shared = min(map(len, losses))  # a killed process may have logged one window less
        assert shared and losses[0][:shared] == losses[1][:shared]
        assert all(math.isfinite(x) for x in losses[0] + losses[1])
    prints = [re.findall(r"process (\d): final parameters fingerprint (\w+)", log)
              for log in cluster["resumed"]["logs"]]
    assert [p[0][0] for p in prints] == [str(i) for i in range(HOSTS)]
    fingerprints = {p[0][1] for p in prints}
    assert len(fingerprints) == 1
    # The export (process 0's replica) holds the same values.
    _, params = model.from_pretrained(cluster["output_dir"])
    assert checkpoints.fingerprint(params) in fingerprints


@pytest.mark.slow
def test_only_process_0_writes_logs_and_exports(cluster):
    check_finished(cluster)
    logdir = cluster["output_dir"] / run_dir.LOG_DIR
    # TensorBoard names each event file events.out.tfevents.<time>.<host>.<pid>.<n>.v2.
    writers = {int(p.name.split(".")[-3]) for p in logdir.glob("events.out.tfevents.*")}
    assert writers == {cluster["killed"]["pids"][0], cluster["resumed"]["pids"][0]}
    logs = cluster["resumed"]["logs"]
    assert "Exported the model" in logs[0] and "Exported the model" not in logs[1]
    assert (cluster["output_dir"] / "model.safetensors").exists()
    assert np.isfinite(json.loads(
        (cluster["output_dir"] / "eval_results.json").read_text("utf-8"))["eval_loss"])


@pytest.mark.slow
def test_bad_data_on_one_host_stops_every_host_with_one_error(tmp_path, data, data_config,
                                                              tokenizer_dir):
    """Host 1 meets invalid UTF-8 in its shard while counting; host 0 must not wait for it."""
    bad_dir = tmp_path / "data"
    bad_dir.mkdir()
    for i in range(len(TRAIN_LINES)):
        text = gzip.decompress((data["dir"] / f"train{i}.txt.gz").read_bytes())
        lines = text.splitlines(keepends=True)
        if i == 1:  # host 1's only file
            lines[6] = b"caf\xe9 " + lines[6]
        (bad_dir / f"train{i}.txt.gz").write_bytes(gzip.compress(b"".join(lines)))
    config = dataclasses.replace(data_config, train_file=str(bad_dir / "train*.txt.gz"))
    output_dir = tmp_path / "out"
    procs = start_cluster(tmp_path, config, tokenizer_dir, output_dir, cluster_env(),
                          "bad")
    codes = finish(procs)
    logs = [(tmp_path / f"bad_{i}.log").read_text("utf-8") for i in range(HOSTS)]
    assert codes == [1, 1], "\n".join(log[-2000:] for log in logs)
    errors = [[line for line in log.splitlines() if line.startswith("error:")] for log in logs]
    assert errors[0] == ["error: process 1 of 2 failed before training (its own log has the "
                         "error); stopping too"]
    assert errors[1] == [f"error: {bad_dir / 'train1.txt.gz'}: line 7: invalid UTF-8; pass "
                         "--invalid_utf8 replace to replace invalid bytes with U+FFFD"]
    assert not (output_dir / run_dir.RUN_MARKER).exists()


@pytest.mark.slow
def test_a_mixture_on_two_hosts_evaluates_every_example_of_each_source_once(
        tmp_path, corpus_file, data_config, tokenizer_dir, tokenizer):
    """Two sources read as blocks by both hosts (uneven shares); one source's validation file
    is too short for the second host, which then evaluates weight-0 batches only."""
    lines = iter(dict.fromkeys(corpus_file.read_text(encoding="utf-8").splitlines()[5000:]))
    files = {}
    for name, count in (("x", 400), ("y", 120), ("x-valid", 30), ("y-valid", 1)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("".join(next(lines) + "\n" for _ in range(count)), "utf-8")
    settings = {
        "train_file": None, "validation_file": None, "max_steps": 8, "eval_steps": 8,
        "train_mixture": [{"name": "x", "train_file": str(files["x"]), "weight": 0.7},
                          {"name": "y", "train_file": str(files["y"]), "weight": 0.3}],
        "validation_mixture": [{"name": n, "train_file": str(files[f"{n}-valid"])}
                               for n in ("x", "y")]}
    output_dir = tmp_path / "out"
    procs = start_cluster(tmp_path, data_config, tokenizer_dir, output_dir,
                          cluster_env(), "mixture", settings)
    codes = finish(procs)
    logs = [(tmp_path / f"mixture_{i}.log").read_text("utf-8") for i in range(HOSTS)]
    assert codes == [0] * HOSTS, "\n".join(log[-3000:] for log in logs)
    results = json.loads((output_dir / "eval_results.json").read_text("utf-8"))
    assert results["eval_weights"] == pytest.approx({"x": 0.7, "y": 0.3})
    for name in ("x", "y"):
        config = dataclasses.replace(data_config, train_file=None,
                                     validation_file=str(files[f"{name}-valid"]))
        shares = [host_lines(config, "validation", i) for i in range(HOSTS)]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == sorted(
            files[f"{name}-valid"].read_text("utf-8").splitlines())
        # Predictions per example depend only on its length: equal totals, each example once.
        assert results[f"eval/{name}/predicted_tokens"] == single_host_predicted_tokens(
            config, tokenizer)
    assert "train/x/epoch=0" in logs[0] and "train/y/epoch=" in logs[0]
