"""What a user meets at the command line, run through `train.main` on 8 CPU devices.

An evaluation-only run of a saved model, and reruns into a finished run's
output_dir with changed arguments: each change is listed, the ones its
checkpoint cannot follow are refused (one error line, the directory left as it
was), and the earlier arguments are kept.
"""

import json
import shutil

import numpy as np
import pytest

import model
import train
from model import configuration
from pipeline import inputs
from trainer import run_dir
from test_bad_input import DOC, run_main, snapshot
from train_runs import TINY_BERT, logged_scalars, tiny_config, write_config

RUN_FLAGS = dict(max_steps=2, save_steps=2, learning_rate=1e-3, shuffle_buffer_size=100)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory, corpus_file):
    path = tmp_path_factory.mktemp("valid") / "valid.txt"
    path.write_text("\n".join(corpus_file.read_text(encoding="utf-8").splitlines()[:40]) + "\n")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus_file, tokenizer_dir):
    """(config file, output_dir) of a finished two-step run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    config = write_config(out.parent / "config.json",
                          tiny_config(corpus_file, tokenizer_dir, **RUN_FLAGS), out)
    train.main([config])
    assert (out / "checkpoints" / "2").is_dir()
    return config, out


def rerun(finished_run, tmp_path, *flags):
    """A copy of the finished run, and the argv that reruns its config into it with `flags`."""
    config, out = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy, [config, "--output_dir", str(copy), *flags]


@pytest.mark.slow
def test_evaluation_only_run_reads_no_training_data(tmp_path, tokenizer_dir, valid_file,
                                                    capsys):
    """--model_name_or_path RUN --validation_file F --do_eval: no train_file needed."""
    saved = tmp_path / "saved_model"
    config = configuration.load_config({"model_type": "bert"})
    configuration.apply_overrides(config, TINY_BERT)
    tokenizer = inputs.load_tokenizer(tokenizer_dir)
    config.vocab_size = len(tokenizer)
    module, params = model.from_config(config, seed=0)
    model.save_pretrained(saved, module, params)
    tokenizer.save_pretrained(saved)
    out = tmp_path / "eval"
    train.main(["--model_name_or_path", str(saved), "--validation_file", str(valid_file),
                "--do_eval", "--output_dir", str(out), "--max_seq_length", "32",
                "--max_predictions_per_seq", "6", "--per_device_eval_batch_size", "2"])
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 0 and results["eval_predicted_tokens"] > 0
    assert 0 < results["eval_loss"] < 20  # an untrained model: about ln(vocabulary size)
    assert not (out / "model.safetensors").exists()  # nothing trained, nothing exported
    assert "Evaluating at step 0" in capsys.readouterr().out


@pytest.mark.slow
def test_changed_arguments_are_listed_and_the_earlier_ones_kept(finished_run, tmp_path,
                                                                 capsys):
    """More steps at another learning rate: honoured, each change listed, history kept."""
    out, argv = rerun(finished_run, tmp_path, "--max_steps", "3", "--learning_rate", "2e-3")
    earlier = (out / "run_args.json").read_text()
    capsys.readouterr()
    train.main(argv)
    console = capsys.readouterr().out
    changed = [line for line in console.splitlines() if line.startswith("changed:")]
    # Linear decay over 2 steps ends at 0; over 3 steps at 2e-3, step 2 is at 2e-3 / 3.
    assert changed == ["changed: --learning_rate 0.001 -> 0.002",
                       "changed: --max_steps 2 -> 3",
                       "changed: the learning rate at step 2: 0 -> 0.000667 (the schedule "
                       "follows the changed arguments)"]
    assert (out / "checkpoints" / "3").is_dir()
    assert (out / "run_args.1.json").read_text() == earlier
    assert json.loads((out / "run_args.json").read_text())["max_steps"] == 3


# The refusals, with generic paths as docs/bad-input.md shows them.
CHANGED_DATA = ("error: cannot resume OUT with --train_file (DATA/text.txt -> DATA/other.txt), "
                "--seed (42 -> 3) changed: the checkpoint's input position is a position in the "
                "training stream these settings define; rerun with the earlier value, or use a "
                "new --output_dir (or --overwrite_output_dir to start over)")
CHANGED_TOKENIZER = ("error: cannot resume OUT with --tokenizer_name (TOK -> DATA/tokenizer) "
                     "changed: the checkpoint's embeddings and input position follow its "
                     "tokenizer; rerun with the earlier value, or use a new --output_dir (or "
                     "--overwrite_output_dir to start over)")


@pytest.mark.slow
def test_changes_the_checkpoint_cannot_follow_are_refused(finished_run, tmp_path, corpus_file,
                                                          tokenizer_dir, capsys, monkeypatch):
    """Another training file and seed, or tokenizer: one error line, and nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus_file, data / "other.txt")
    shutil.copytree(tokenizer_dir, data / "tokenizer")
    out, argv = rerun(finished_run, tmp_path, "--train_file", str(data / "other.txt"))
    before = snapshot(out)

    def refusal(rerun_argv):
        code, message = run_main(rerun_argv, capsys, monkeypatch)
        assert code == 1
        for path, name in ((out, "OUT"), (corpus_file, "DATA/text.txt"), (data, "DATA"),
                           (tokenizer_dir, "TOK")):
            message = message.replace(str(path), name)
        assert snapshot(out) == before
        return message

    assert refusal(argv + ["--seed", "3"]) == CHANGED_DATA
    assert refusal(argv[:3] + ["--tokenizer_name", str(data / "tokenizer")]) == CHANGED_TOKENIZER
    with open(DOC, encoding="utf-8") as f:
        table = f.read()
    assert f"`{CHANGED_DATA}`" in table and f"`{CHANGED_TOKENIZER}`" in table
    # Evaluating the checkpoint reads no training stream: its settings may change.
    _, eval_argv = rerun(finished_run, tmp_path / "eval", "--do_train", "false", "--do_eval",
                         "--seed", "3", "--validation_file", str(data / "other.txt"),
                         "--max_eval_samples", "16")
    train.main(eval_argv)
    results = json.loads((tmp_path / "eval" / "run" / "eval_results.json").read_text())
    assert results["step"] == 2


def test_the_earlier_arguments_are_kept_until_a_fresh_start(tmp_path):
    out = tmp_path / "run"
    first, second = {"learning_rate": 1e-3, "seed": 1}, {"learning_rate": 2e-3, "seed": 1}
    for args in (first, first, second, second, first):  # a rerun with the same arguments adds none
        run_dir.claim_output_dir(out, overwrite=False, run_args=args)
    assert sorted(p.name for p in out.iterdir()) == [
        "run_args.1.json", "run_args.2.json", "run_args.json"]
    assert [json.loads((out / name).read_text()) for name in
            ("run_args.1.json", "run_args.2.json", "run_args.json")] == [first, second, first]
    moved = run_dir.changed_arguments(dict(first, output_dir="here", dtype="float32"),
                                      dict(second, output_dir="elsewhere", new_flag=1))
    assert moved == [("learning_rate", 1e-3, 2e-3)]  # not output_dir, nor what one run lacks
    run_dir.claim_output_dir(out, overwrite=True, run_args=second)
    assert sorted(p.name for p in out.iterdir()) == ["run_args.json"]


@pytest.mark.slow
@pytest.mark.parametrize("max_steps", [100, 50])
def test_a_warmup_as_long_as_the_run_warms_up_through_it_and_trains(max_steps, tmp_path,
                                                                     corpus_file, tokenizer_dir,
                                                                     capsys):
    """--warmup_steps 100 over 100 or 50 steps: the rate used to be 0 throughout (a linear decay
    over T - w <= 0 steps); now it climbs through the run, as run_mlm_flax.py's does."""
    out = tmp_path / "run"
    config = tiny_config(corpus_file, tokenizer_dir, **dict(
        RUN_FLAGS, max_steps=max_steps, save_steps=max_steps, warmup_steps=100,
        learning_rate=5e-3))
    train.main([write_config(tmp_path / "config.json", config, out)])
    assert (f"warmup_steps 100 >= the run's {max_steps} steps: the learning rate warms up "
            "through the whole run") in capsys.readouterr().out
    scalars = logged_scalars(out)
    rates, losses = scalars["train/learning_rate"], scalars["train/loss"]
    assert sorted(rates) == list(range(1, max_steps + 1))
    # Step s's update uses the rate at optimizer step s - 1: the warm-up's 0 only at the first.
    assert rates[1] == 0 and all(rates[s] == pytest.approx(5e-3 * (s - 1) / 100, rel=1e-5)
                                 for s in range(2, max_steps + 1))
    first, last = (np.mean([losses[s] for s in steps])
                   for steps in (range(1, 11), range(max_steps - 9, max_steps + 1)))
    assert last < first - 0.5, (first, last)
