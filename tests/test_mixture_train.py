"""A mixture in the trainer: train.py killed and resumed, per-source evaluation and epochs.

The runs are real `python train.py config.json` subprocesses on a tiny BERT
with a JSON config whose train_mixture is a list of objects: three sources of
uneven size, the smallest of which repeats several times within the run.
"""

import json
import signal
import time

import numpy as np
import pytest

from trainer import checkpoints, mixtures, run_dir

from train_runs import (finish, logged_scalars, read_until, run, run_to_end, start,
                        tiny_config, write_config)

STEPS = 24
NAMES = ("big", "mid", "small")
WEIGHTS = (0.5, 0.3, 0.2)
TRAIN_LINES = (1200, 300, 40)  # small: ~40 examples, about 77 drawn over the run
VALIDATION_LINES = 20  # mid's own validation_file; the others hold out 5%


@pytest.fixture(scope="module")
def mixture_config(tmp_path_factory, corpus_file, tokenizer_dir):
    directory = tmp_path_factory.mktemp("mixture_data")
    lines = iter(dict.fromkeys(corpus_file.read_text(encoding="utf-8").splitlines()))
    files = {}
    for name, count in [*zip(NAMES, TRAIN_LINES), ("mid-validation", VALIDATION_LINES)]:
        files[name] = directory / f"{name}.txt"
        files[name].write_text("".join(next(lines) + "\n" for _ in range(count)),
                               encoding="utf-8")
    sources = [{"name": name, "train_file": str(files[name]), "weight": weight}
               for name, weight in zip(NAMES, WEIGHTS)]
    sources[1]["validation_file"] = str(files["mid-validation"])
    config = tiny_config(corpus_file, tokenizer_dir, train_mixture=sources, line_by_line=True,
                         do_eval=True, per_device_eval_batch_size=2, learning_rate=3e-3,
                         max_steps=STEPS, eval_steps=12, save_steps=4, seed=1)
    del config["train_file"]
    return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mixture_config):
    return run_to_end(tmp_path_factory.mktemp("mixture_uninterrupted"), mixture_config)


@pytest.mark.slow
def test_each_source_is_evaluated_and_weighted_into_the_total(uninterrupted):
    output_dir, console = uninterrupted
    logged = logged_scalars(output_dir)
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["eval_weights"] == pytest.approx(dict(zip(NAMES, WEIGHTS)))
    for metric in ("loss", "accuracy"):
        per_source = [results[f"eval/{name}/{metric}"] for name in NAMES]
        assert results[f"eval_{metric}"] == pytest.approx(np.dot(WEIGHTS, per_source))
        for name, value in zip(NAMES, per_source):
            assert logged[f"eval/{name}/{metric}"][STEPS] == pytest.approx(value, rel=1e-6)
        assert logged[f"eval/{metric}"][STEPS] == pytest.approx(results[f"eval_{metric}"])
    assert len({results[f"eval/{name}/loss"] for name in NAMES}) == 3  # three different sets
    run_args = json.loads((output_dir / run_dir.RUN_MARKER).read_text())
    assert run_args["mixture_weights"] == pytest.approx(dict(zip(NAMES, WEIGHTS)))
    assert "source small (weight 0.200): loss" in console and "Traceback" not in console


@pytest.mark.slow
def test_a_short_source_logs_its_epochs(uninterrupted):
    output_dir, console = uninterrupted
    logged = logged_scalars(output_dir)
    small = [logged["train/small/epoch"][step] for step in range(1, STEPS + 1)]
    assert small[0] == 0 and small[-1] >= 1 and all(np.diff(small) >= 0)
    assert set(logged["train/big/epoch"].values()) == {0}
    first = small.index(1) + 1
    assert f"step {first}: source small begins epoch 1 (of this host's share)" in console


@pytest.mark.slow
def test_killed_mixture_run_resumes_with_the_same_losses_and_source_positions(
        tmp_path, mixture_config, uninterrupted):
    expected = logged_scalars(uninterrupted[0])
    output_dir = tmp_path / "run"
    config_file = write_config(tmp_path / "config.json", mixture_config, output_dir)
    process = start(config_file)
    read_until(process, "train 10/")
    deadline = time.monotonic() + 60
    while checkpoints.Checkpoints(output_dir).latest_step is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.01)
    process.kill()
    code, _ = finish(process)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoints.Checkpoints(output_dir).latest_step
    assert killed_at is not None and killed_at < STEPS

    code, console = run(config_file)
    assert code == 0, console[-4000:]
    assert f"Resuming from the checkpoint of step {killed_at}" in console
    got = logged_scalars(output_dir)
    for name in ("train/loss", "eval/loss", *(f"eval/{n}/loss" for n in NAMES),
                 *(f"train/{n}/epoch" for n in NAMES)):
        assert got[name] == expected[name], name


def test_the_feed_gets_no_tags_and_each_source_epoch_is_followed(capsys):
    epochs = mixtures.SourceEpochs(["a", "b"])
    batch = {"input_ids": np.zeros((4, 8), np.int32), "source": np.array([0, 1, 1, 0]),
             "epoch": np.array([0, 2, 3, 0])}
    placed, tags = epochs.place(batch, place_batch=lambda features: sorted(features))
    assert placed == ["input_ids"] and sorted(tags) == ["epoch", "source"]
    epochs.observe(tags, step=1)  # the first batch seen: no announcement
    epochs.observe({"source": np.array([1, 1]), "epoch": np.array([3, 4])}, step=2)
    assert epochs.scalars() == {"a/epoch": 0.0, "b/epoch": 4.0}
    assert capsys.readouterr().out == "step 2: source b begins epoch 4 (of this host's share)\n"
    epochs.observe({}, step=3)  # a run without a mixture has no tags
    assert mixtures.SourceEpochs([]).place({"x": 1}, place_batch=dict) == ({"x": 1}, {})


def test_the_eval_total_weighs_each_source_result():
    per_source = {"a": {"loss": 2.0, "accuracy": 0.5, "perplexity": 7.4, "predicted_tokens": 10},
                  "b": {"loss": 4.0, "accuracy": 0.1, "perplexity": 54.6, "predicted_tokens": 90}}
    total = mixtures.weighted_total(per_source, {"a": 0.75, "b": 0.25})
    assert total["loss"] == 2.5 and total["accuracy"] == pytest.approx(0.4)
    assert total["perplexity"] == pytest.approx(np.exp(2.5))
    assert total["predicted_tokens"] == 100 and total["b/loss"] == 4.0
