"""Reading gs:// through TensorFlow's own GCS filesystem, as on a TPU VM: every line exactly once.

A real fake-gcs-server (tests/gcs_emulator.py) serves a bucket built from
the corpus, with every line made unique by its file and line number, so a
line read twice or dropped shows up by name. TensorFlow picks up the
emulator's proxy and CA only in a fresh process, so each read runs in a
subprocess: this file run as a script (see `main`), or `train.py` itself.
All traffic stays on 127.0.0.1.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections import Counter

import jax
import numpy as np
import pytest

from gcs_emulator import GcsEmulator
from train_runs import TINY_BERT
from pipeline import inputs, sources
from pipeline.config import DataConfig
from trainer import args as args_lib
from trainer import run_dir

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUCKET = "bkt"
TXT = ["txt/a.txt", "txt/b.txt", "txt/c.txt"]
JSONL = ["jsonl/a.jsonl", "jsonl/b.jsonl", "jsonl/c.jsonl.gz"]
LINES_PER_FILE = 200
BLANK_EVERY = 50  # blank lines are dropped by the pipeline, never counted
READ_BATCH = 64
DONE = "read lines:"  # the worker prints this only after every read completed
# Retries that cannot wait long: a test with endless cuts fails in seconds, not minutes.
FAST_RETRIES = {"GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
                "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000"}


def gs(pattern):
    return f"gs://{BUCKET}/{pattern}"


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, corpus_file):
    """The bucket's files on disk, and {prefix: its non-blank lines in file order}."""
    root = tmp_path_factory.mktemp("buckets")
    paragraphs = iter(line for line in corpus_file.read_text(encoding="utf-8").splitlines()
                      if line.strip())
    expected = {}
    for name in TXT + JSONL:
        texts = [f"{name}:{n} {next(paragraphs)}" for n in range(1, LINES_PER_FILE + 1)]
        lines = []
        for n, text in enumerate(texts, 1):
            lines.append(json.dumps({"text": text}) if ".jsonl" in name else text)
            if n % BLANK_EVERY == 0:
                lines.append("" if ".jsonl" in name else "  \t")
        _write(root / BUCKET / name, lines)
        expected.setdefault(name.split("/")[0], []).extend(texts)
    return root, expected


@pytest.fixture
def start_emulator(tmp_path):
    """Starts emulators (with the proxy's faults) over the bucket; stops them after the test."""
    started = []

    def start(buckets_dir, **faults):
        workdir = tmp_path / f"emulator{len(started)}"
        workdir.mkdir()
        started.append(GcsEmulator(workdir, buckets_dir, **faults))
        return started[-1]

    yield start
    for emulator in started:
        emulator.close()


def run_reads(emulator, reads, tmp_path, extra_env=None, timeout=180):
    """Runs the worker over `reads` in a fresh process; (returncode, console, results or None)."""
    spec = tmp_path / "reads.json"
    out = tmp_path / "lines.json"
    spec.write_text(json.dumps({"reads": reads, "out": str(out)}))
    env = dict(emulator.environment(), **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, __file__, str(spec)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    console = result.stdout + result.stderr
    lines = json.loads(out.read_text()) if out.exists() else None
    return result.returncode, console, lines


def read_lines(train_file, process_index=0, process_count=1, shuffle=False, epochs=1):
    """`epochs` epochs of line_batches' train split, as the trainer asks for them: one flat list."""
    config = DataConfig(train_file=train_file, validation_split_percentage=0,
                        shuffle_buffer_size=300, seed=7)
    ds = sources.line_batches(config, "train", process_index=process_index,
                              process_count=process_count, shuffle=shuffle,
                              read_batch_size=READ_BATCH, num_epochs=epochs)
    return [line.decode("utf-8") for batch in ds for line in batch["text"].numpy()]


def main(spec_path):
    """Worker: the reads in the spec (a JSON list of read_lines kwargs) to its "out" file."""
    spec = json.loads(pathlib.Path(spec_path).read_text())
    results = [read_lines(**read) for read in spec["reads"]]
    pathlib.Path(spec["out"]).write_text(json.dumps(results))
    print(DONE, sum(map(len, results)))


def epochs_of(lines, expected, epochs):
    """The read split into epochs, each asserted to hold every expected line exactly once."""
    size = len(expected)
    assert len(lines) == epochs * size, (len(lines), epochs * size)
    parts = [lines[i * size:(i + 1) * size] for i in range(epochs)]
    for part in parts:
        counts = Counter(part)
        assert counts == Counter(expected), (
            f"missing {sorted(Counter(expected) - counts)[:3]}, "
            f"extra {sorted(counts - Counter(expected))[:3]}")
    return parts


CLEAN_READS = {
    "txt": dict(train_file=gs("txt/*.txt")),
    "jsonl": dict(train_file=gs("jsonl/*.jsonl*")),  # .jsonl and .jsonl.gz
    "txt_shuffled": dict(train_file=gs("txt/*.txt"), shuffle=True, epochs=2),
    "jsonl_shuffled": dict(train_file=gs("jsonl/*.jsonl*"), shuffle=True, epochs=2),
    "txt_host0": dict(train_file=gs("txt/*.txt"), process_index=0, process_count=2),
    "txt_host1": dict(train_file=gs("txt/*.txt"), process_index=1, process_count=2),
    "jsonl_host0": dict(train_file=gs("jsonl/*.jsonl*"), process_index=0, process_count=2,
                        shuffle=True),
    "jsonl_host1": dict(train_file=gs("jsonl/*.jsonl*"), process_index=1, process_count=2,
                        shuffle=True),
}


@pytest.fixture(scope="module")
def clean_reads(bucket, tmp_path_factory):
    """All reads over a fault-free emulator, in one worker process (TF starts once)."""
    tmp_path = tmp_path_factory.mktemp("clean")
    emulator = GcsEmulator(tmp_path, bucket[0])
    try:
        code, console, lines = run_reads(emulator, list(CLEAN_READS.values()), tmp_path)
    finally:
        emulator.close()
    assert code == 0, console[-3000:]
    return dict(zip(CLEAN_READS, lines))


@pytest.mark.parametrize("prefix", ["txt", "jsonl"])
def test_every_line_is_read_once(bucket, clean_reads, prefix):
    expected = bucket[1][prefix]
    assert len(expected) == 3 * LINES_PER_FILE
    (lines,) = epochs_of(clean_reads[prefix], expected, 1)
    # Read in order within each file (files interleaved by batches).
    for name in {line.split(":")[0] for line in expected}:
        numbers = [int(line.split(":")[1].split()[0]) for line in lines
                   if line.startswith(name + ":")]
        assert numbers == list(range(1, LINES_PER_FILE + 1)), name


@pytest.mark.parametrize("prefix", ["txt", "jsonl"])
def test_shuffled_epochs_each_read_every_line_once(bucket, clean_reads, prefix):
    expected = bucket[1][prefix]
    first, second = epochs_of(clean_reads[f"{prefix}_shuffled"], expected, 2)
    assert first != clean_reads[prefix]  # shuffled
    assert first != second  # afresh each epoch


@pytest.mark.parametrize("prefix", ["txt", "jsonl"])
def test_two_hosts_read_disjoint_shards_that_make_up_the_corpus(bucket, clean_reads, prefix):
    host0, host1 = clean_reads[f"{prefix}_host0"], clean_reads[f"{prefix}_host1"]
    assert host0 and host1
    assert not set(host0) & set(host1)
    epochs_of(host0 + host1, bucket[1][prefix], 1)
    files0 = {line.split(":")[0] for line in host0}
    files1 = {line.split(":")[0] for line in host1}
    if prefix == "txt":
        # Uncompressed: hosts share the blocks of all files, so both read from every file.
        assert files0 == files1 and len(files0) == 3
        assert abs(len(host0) - len(host1)) < 0.2 * len(host0)
    else:
        # A .gz among them: whole files, so each file's lines are on one host only.
        assert not files0 & files1 and len(files0 | files1) == 3


def test_connections_cut_mid_transfer_are_retried_without_losing_a_line(
        bucket, start_emulator, tmp_path):
    emulator = start_emulator(bucket[0], cut_after_bytes=8000, cuts=3)
    reads = [CLEAN_READS["txt"], CLEAN_READS["jsonl"]]
    code, console, lines = run_reads(emulator, reads, tmp_path, FAST_RETRIES)
    assert code == 0, console[-3000:]
    assert emulator.proxy.cuts_done == 3
    epochs_of(lines[0], bucket[1]["txt"], 1)
    epochs_of(lines[1], bucket[1]["jsonl"], 1)


def test_endless_cuts_fail_naming_the_file_after_the_retry_budget(
        bucket, start_emulator, tmp_path):
    emulator = start_emulator(bucket[0], cut_after_bytes=8000, cuts=10**9)
    code, console, lines = run_reads(emulator, [CLEAN_READS["txt"]], tmp_path,
                                     dict(FAST_RETRIES, GCS_RETRY_CONFIG_MAX_RETRIES="3"))
    assert code != 0 and lines is None, console[-3000:]
    assert DONE not in console
    assert "All 3 retry attempts failed" in console, console[-3000:]
    assert any(f"when reading {gs(name)}" in console for name in TXT), console[-3000:]
    assert emulator.proxy.cuts_done >= 3


# A short training run reading gs:// with train.py itself.

TRAIN_FLAGS = [
    "--model_type", "bert",
    "--config_overrides", TINY_BERT,
    # One example per line, all lines trained on: an epoch's steps count its lines.
    "--line_by_line", "--validation_split_percentage", "0",
    "--max_seq_length", "64", "--max_predictions_per_seq", "10",
    "--per_device_train_batch_size", "1", "--shuffle_buffer_size", "200",
    "--do_train", "--num_train_epochs", "1", "--logging_steps", "1", "--save_steps", "1000",
    "--learning_rate", "1e-3", "--seed", "3",
]


def one_epoch(flags, local_train_file):
    """(batches, predicted tokens) of one training epoch, read here from the local copy."""
    _, data_args, training_args = args_lib.parse_args(flags)
    config = dataclasses.replace(args_lib.data_config(data_args, training_args),
                                 train_file=local_train_file)
    tokenizer = inputs.load_tokenizer(flags[flags.index("--tokenizer_name") + 1])
    ds = inputs.train_dataset(config, tokenizer,
                              per_device_batch_size=training_args.per_device_train_batch_size,
                              local_device_count=jax.local_device_count(), num_epochs=1)
    weights = [float(np.sum(batch["masked_weights"].numpy())) for batch in ds]
    return len(weights), sum(weights)


def train(emulator, tokenizer_dir, output_dir, extra_env, timeout=400):
    """Runs train.py on gs://bkt/txt/*.txt through the emulator.

    Returns (flags, returncode, console, the proxy's cuts before the run
    printed "Training ...", i.e. before its training pass began).
    """
    flags = TRAIN_FLAGS + ["--tokenizer_name", str(tokenizer_dir),
                           "--train_file", gs("txt/*.txt"), "--output_dir", str(output_dir)]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py")] + flags, cwd=ROOT,
                               env=dict(emulator.environment(), **extra_env), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    console, cuts_before_training = [], None
    try:
        for line in process.stdout:
            console.append(line)
            if line.startswith("Training ") and cuts_before_training is None:
                cuts_before_training = emulator.proxy.cuts_done
    finally:
        watchdog.cancel()
    return flags, process.wait(), "".join(console), cuts_before_training


@pytest.mark.slow
def test_training_reads_every_gs_line_once_per_epoch_despite_cut_connections(
        bucket, start_emulator, tmp_path, tokenizer_dir):
    from test_monitoring import read_scalars  # TensorBoard's own event reader

    # Every other long transfer is cut, in the pass that counts the steps and in training.
    emulator = start_emulator(bucket[0], cut_after_bytes=8000, cuts=10**9, cut_every=2)
    output_dir = tmp_path / "run"
    flags, code, console, cuts_before = train(emulator, tokenizer_dir, output_dir,
                                              FAST_RETRIES)
    assert code == 0, console[-4000:]
    assert 0 < cuts_before < emulator.proxy.cuts_done

    lines = len(bucket[1]["txt"])
    assert lines % jax.local_device_count() == 0  # no partial last batch to drop
    steps, predicted = one_epoch(flags, str(bucket[0] / BUCKET / "txt" / "*.txt"))
    assert steps == lines // jax.local_device_count()
    assert f"Training {steps} steps" in console, console[-4000:]
    scalars = read_scalars(output_dir / run_dir.LOG_DIR)
    per_step = scalars["train/predicted_tokens"]
    assert sorted(per_step) == list(range(1, steps + 1))
    # A line's predictions depend on its length: the run's total equals the local epoch's
    # when it trained on the same lines (checked: one line fewer changes both counts).
    assert sum(per_step.values()) == predicted


@pytest.mark.slow
def test_training_stops_naming_the_gs_file_when_retries_run_out(
        bucket, start_emulator, tmp_path, tokenizer_dir):
    emulator = start_emulator(bucket[0], cut_after_bytes=8000, cuts=10**9)
    output_dir = tmp_path / "run"
    _, code, console, _ = train(emulator, tokenizer_dir, output_dir,
                                dict(FAST_RETRIES, GCS_RETRY_CONFIG_MAX_RETRIES="3"))
    assert code != 0, console[-4000:]
    assert "All 3 retry attempts failed" in console, console[-4000:]
    assert any(f"when reading {gs(name)}" in console for name in TXT), console[-4000:]
    assert "Training " not in console and not (output_dir / "config.json").exists()
    assert "Traceback" not in console, console[-4000:]


if __name__ == "__main__":
    main(sys.argv[1])
