"""train.py end to end on 8 CPU devices: train, evaluate, checkpoint, get killed, resume, export.

Each run is a real `python train.py config.json` subprocess on a tiny BERT,
so the kill, the signal handling and the resume are the product's own. Every
test runs under pmap and on a mesh with sharded parameters (data=2,fsdp=4).
"""

import json
import os
import signal
import time

import numpy as np
import pytest

import train
from trainer import checkpoints, run_dir

from test_monitoring import profile_traces
from train_runs import (PARALLELISM, finish, logged_scalars, read_until, run, run_to_end,
                        start, tiny_config, write_config)

STEPS = 40
GRACE_SECONDS = 30  # what a preempted Cloud VM (and Kubernetes, by default) allows after SIGTERM


@pytest.fixture(scope="module", params=sorted(PARALLELISM))
def config(request, corpus_file, tokenizer_dir):
    return tiny_config(corpus_file, tokenizer_dir, max_eval_samples=48, do_eval=True,
                       per_device_eval_batch_size=2, learning_rate=3e-3, warmup_steps=5,
                       max_steps=STEPS, eval_steps=20, save_steps=4, profile_steps=3, seed=1,
                       **PARALLELISM[request.param])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config):
    """The whole run, its console listing every module it imported (python -X importtime)."""
    return run_to_end(tmp_path_factory.mktemp("uninterrupted"), config,
                      env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))


def imported_modules(console):
    """The modules `python -X importtime` listed, by full name."""
    return {line.rsplit("|", 1)[-1].strip() for line in console.splitlines()
            if line.startswith("import time:")}


@pytest.mark.slow
def test_a_run_on_text_files_imports_no_torch_and_no_dataset_library(uninterrupted):
    """torch is installed here (the parity tests use it); a run has no use for it."""
    imported = imported_modules(uninterrupted[1])
    assert {"tensorflow", "jax", "tokenizers"} <= imported  # what a run does import is listed
    unused = imported & {"torch", "tensorflow_datasets", "datasets", "jieba",
                         "google.cloud.storage"}
    assert not unused, sorted(unused)


@pytest.mark.slow
def test_trains_evaluates_and_logs(uninterrupted):
    output_dir, console = uninterrupted
    scalars = logged_scalars(output_dir)
    assert sorted(scalars["train/loss"]) == list(range(1, STEPS + 1))
    assert set(scalars["eval/loss"]) == {20, STEPS}
    for name in ("train/accuracy", "train/learning_rate", "train/grad_norm",
                 "eval/accuracy", "eval/perplexity", "steps_per_sec"):
        assert name in scalars, sorted(scalars)
    first, last = scalars["train/loss"][1], scalars["train/loss"][STEPS]
    assert last < first
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["step"] == STEPS
    assert results["eval_loss"] == pytest.approx(scalars["eval/loss"][STEPS], rel=1e-6)
    assert results["perplexity"] == pytest.approx(np.exp(results["eval_loss"]), rel=1e-5)
    assert "tensorboard --logdir" in console and "Traceback" not in console
    assert max(map(int, os.listdir(output_dir / run_dir.CHECKPOINT_DIR))) == STEPS
    traces = profile_traces(output_dir / run_dir.LOG_DIR)
    assert len(traces) == 1, "expected one profile of profile_steps steps"


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses(tmp_path, config, uninterrupted):
    expected = logged_scalars(uninterrupted[0])
    output_dir = tmp_path / "run"
    config_file = write_config(tmp_path / "config.json", config, output_dir)

    # SIGKILL once a checkpoint is complete and the run is past it.
    process = start(config_file)
    read_until(process, "train 6/")
    first_checkpoint = output_dir / run_dir.CHECKPOINT_DIR / "4"
    deadline = time.monotonic() + 60
    while not first_checkpoint.is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint of step 4"
        time.sleep(0.01)
    process.kill()
    code, _ = finish(process)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoints.Checkpoints(output_dir).latest_step
    assert killed_at is not None and killed_at < STEPS

    # Rerun, then SIGTERM: it saves a checkpoint of the step it reached and exits.
    process = start(config_file)
    console = read_until(process, f"train {killed_at + 3}/")
    assert f"Resuming from the checkpoint of step {killed_at}" in console
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, rest = finish(process)
    assert code == 128 + signal.SIGTERM, rest[-3000:]
    assert time.monotonic() - signalled < GRACE_SECONDS
    stopped_at = int(rest.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert killed_at + 3 <= stopped_at < STEPS
    assert checkpoints.Checkpoints(output_dir).latest_step == stopped_at
    assert "Traceback" not in rest

    code, console = run(config_file)
    assert code == 0, console[-4000:]
    assert f"Resuming from the checkpoint of step {stopped_at}" in console
    got = logged_scalars(output_dir)
    for name in ("train/loss", "eval/loss", "eval/accuracy"):
        assert got[name] == expected[name], name


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_same_logits(uninterrupted):
    assert_transformers_agrees(str(uninterrupted[0]))


def assert_transformers_agrees(output_dir):
    """The export in output_dir loads in PyTorch transformers with our model's logits."""
    torch = pytest.importorskip("torch")
    import transformers  # pylint: disable=import-outside-toplevel
    import model  # pylint: disable=import-outside-toplevel

    tokenizer = transformers.AutoTokenizer.from_pretrained(output_dir)
    encoded = tokenizer(["The module returns a list of [MASK] names.",
                         "Raise an error when the file is missing."],
                        padding=True, return_tensors="np")
    module, params = model.from_pretrained(output_dir)
    ours = np.asarray(module.apply({"params": params}, encoded["input_ids"],
                                   encoded["attention_mask"],
                                   token_type_ids=encoded["token_type_ids"]))
    theirs_model = transformers.AutoModelForMaskedLM.from_pretrained(output_dir).eval()
    with torch.no_grad():
        theirs = theirs_model(**{k: torch.tensor(v) for k, v in encoded.items()}).logits.numpy()
    mask = encoded["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=2e-4, rtol=1e-4)


def test_user_error_is_one_line_and_leaves_the_directory_alone(tmp_path, config, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    config_file = write_config(tmp_path / "config.json", config, foreign)
    with pytest.raises(SystemExit) as exit_info:
        train.main([config_file])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output_dir ")
    assert os.listdir(foreign) == ["thesis.tex"]


@pytest.mark.slow
def test_streamed_hf_dataset_resumes_after_sigkill_with_the_same_losses(
        tmp_path, config, corpus_file):
    """A folder of JSON lines streamed by `datasets` resumes at the exact batch."""
    folder = tmp_path / "hf"
    folder.mkdir()
    lines = [line for line in corpus_file.read_text(encoding="utf-8").splitlines() if line]
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": line}) + "\n" for line in lines)
    streamed = {key: value for key, value in config.items()
                if key not in ("train_file", "do_eval", "max_eval_samples", "profile_steps")}
    streamed.update(dataset_name=str(folder), max_steps=12, save_steps=4)
    code, console = run(write_config(tmp_path / "whole.json", streamed, tmp_path / "whole"))
    assert code == 0, console[-4000:]
    expected = logged_scalars(tmp_path / "whole")["train/loss"]

    output_dir = tmp_path / "run"
    config_file = write_config(tmp_path / "config.json", streamed, output_dir)
    process = start(config_file)
    read_until(process, "train 6/")
    while not (output_dir / run_dir.CHECKPOINT_DIR / "4").is_dir() and process.poll() is None:
        time.sleep(0.01)
    process.kill()
    code, _ = finish(process)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoints.Checkpoints(output_dir).latest_step
    assert killed_at is not None and killed_at < 12

    code, console = run(config_file)
    assert code == 0, console[-4000:]
    assert f"Resuming from the checkpoint of step {killed_at}" in console
    assert logged_scalars(output_dir)["train/loss"] == expected
