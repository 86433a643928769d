"""Pretraining in phases: a run that starts from another run's checkpoint (--init_checkpoint).

Phase 1 trains the tiny BERT at sequence length 32 once for the module; each
phase 2 continues it at 64 (its model's longest), in process where a separate
process adds nothing, and as a real process where it is SIGKILLed.
"""

import dataclasses
import json
import signal

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import train
import train_runs
from pipeline import inputs, tokenizer_training
from test_bad_input import run_main, snapshot
from trainer import args as args_lib, checkpoints, optimizers, phases, run_dir
from train_runs import PARALLELISM, logged_scalars, tiny_config, write_config

PHASE_1_STEPS = 4
PHASE_2 = dict(max_seq_length=64, max_predictions_per_seq=None, learning_rate=2e-3,
               warmup_steps=2, max_steps=6, save_steps=2, per_device_train_batch_size=1)


@pytest.fixture(scope="module")
def phase_1(tmp_path_factory, corpus_file, tokenizer_dir):
    """The output_dir of a finished phase 1 (sequence length 32, AdamW)."""
    out = tmp_path_factory.mktemp("phase1") / "run"
    config = tiny_config(corpus_file, tokenizer_dir, max_steps=PHASE_1_STEPS,
                         save_steps=PHASE_1_STEPS, learning_rate=2e-3, shuffle_buffer_size=100)
    train.main([write_config(out.parent / "config.json", config, out)])
    return out


def phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1, *, name="phase2", **changes):
    """The argv of a phase 2 from phase_1 into tmp_path/name, and its output_dir."""
    out = tmp_path / name
    config = tiny_config(corpus_file, tokenizer_dir,
                         **{**PHASE_2, "init_checkpoint": str(phase_1), **changes})
    return [write_config(tmp_path / f"{name}.json", config, out)], out


def by_path(tree):
    """{path of names: leaf as numpy}: a restored checkpoint's dicts and our state's
    namedtuples and tuples compare alike."""
    return {tuple(optimizers.key_name(key) for key in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def stored_state(output_dir, step):
    """A committed checkpoint's train state, read by Orbax without a template."""
    return ocp.StandardCheckpointer().restore(
        output_dir / run_dir.CHECKPOINT_DIR / str(step) / "state")


def start_of_phase_2(argv):
    """(the Run, its state on the host) as train.py sets them up, before any step."""
    run, state = train.set_up(*args_lib.parse_args(argv))
    try:
        return run, run.feed.to_host(state)
    finally:
        run.close()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_state", ["keep", "reset"])
def test_phase_2_starts_from_phase_1s_parameters_and_chosen_optimizer_state(
        optimizer_state, tmp_path, corpus_file, tokenizer_dir, phase_1, capsys):
    argv, out = phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1,
                             init_optimizer_state=optimizer_state)
    run, state = start_of_phase_2(argv)
    earlier = by_path(stored_state(phase_1, PHASE_1_STEPS))
    ours = by_path({"params": state.params, "opt_state": state.opt_state})
    params = [path for path in ours if path[0] == "params"]
    moments = [path for path in ours if path[0] == "opt_state" and ("mu" in path or "nu" in path)]
    assert len(params) > 10 and len(moments) == 2 * len(params)
    for path in params:
        np.testing.assert_array_equal(ours[path], earlier[path], err_msg=str(path))
    for path in moments:
        if optimizer_state == "keep":
            np.testing.assert_array_equal(ours[path], earlier[path], err_msg=str(path))
        else:
            assert not ours[path].any(), path
    assert int(state.step) == 0 and run.start_step == 0 and run.total_steps == 6
    schedule_counts = [leaf for leaf in jax.tree.leaves(
        state.opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
        if isinstance(leaf, optax.ScaleByScheduleState)]
    assert [int(s.count) for s in schedule_counts] == [0]  # phase 2's schedule from its start
    console = capsys.readouterr().out
    kept = ("parameters and optimizer state" if optimizer_state == "keep"
            else "parameters; a fresh optimizer state")
    assert (f"Starting from the checkpoint of step {PHASE_1_STEPS} in "
            f"{phase_1 / 'checkpoints'} ({kept})") in console
    started = json.loads((out / run_dir.RUN_MARKER).read_text())["started_from"]
    assert started == {"checkpoint": str(phase_1 / "checkpoints" / str(PHASE_1_STEPS)),
                       "step": PHASE_1_STEPS}


def test_phase_2_orders_its_data_by_its_own_seed(tokenizer, corpus_file):
    """Phase 2 on phase 1's corpus does not replay phase 1's first batches in its order."""
    _, data_args, training_args = args_lib.parse_args(
        ["--train_file", str(corpus_file), "--output_dir", "unused", "--max_seq_length", "32"])
    phase_1_config = args_lib.data_config(data_args, training_args)
    seed = phases.data_seed(phase_1_config.seed, {"step": PHASE_1_STEPS})
    assert seed != phase_1_config.seed and seed == phases.data_seed(42, {"step": 4})
    assert phases.data_seed(42, None) == 42

    def first_batch(config):
        dataset = inputs.train_dataset(config, tokenizer, per_device_batch_size=8,
                                       local_device_count=1, process_index=0, process_count=1)
        return next(iter(dataset))["input_ids"].numpy()

    phase_2_config = dataclasses.replace(phase_1_config, seed=seed)
    assert (first_batch(phase_1_config) != first_batch(phase_2_config)).any()


@pytest.mark.slow
def test_phase_2_trains_its_own_schedule_and_resumes_bitwise_after_sigkill(
        tmp_path, corpus_file, tokenizer_dir, phase_1):
    """The first update, at phase 2's warm-up rate 0, leaves phase 1's parameters as they
    were (phase 1's schedule count, 4, would give it 1e-3); a SIGKILLed phase 2 resumes
    from its own checkpoint with the same losses, without reading --init_checkpoint again."""
    argv, out = phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1, name="whole",
                             save_steps=1)
    train.main(argv)
    jax.tree.map(np.testing.assert_array_equal, stored_state(out, 1)["params"],
                 stored_state(phase_1, PHASE_1_STEPS)["params"])
    expected = logged_scalars(out)["train/loss"]
    assert sorted(expected) == list(range(1, PHASE_2["max_steps"] + 1))

    argv, killed_out = phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1,
                                    name="killed", save_steps=1)
    process = train_runs.start(argv[0])
    train_runs.read_until(process, "train 3/")
    process.kill()
    code, _ = train_runs.finish(process)
    assert code == -signal.SIGKILL
    killed_at = checkpoints.Checkpoints(killed_out).latest_step
    assert killed_at is not None and killed_at < PHASE_2["max_steps"]
    process = train_runs.start(argv[0])
    code, console = train_runs.finish(process)
    assert code == 0, console[-3000:]
    assert f"--init_checkpoint {phase_1} is no longer used" in console
    assert f"Resuming from the checkpoint of step {killed_at}" in console
    resumed = train_runs.step_losses(killed_out / run_dir.LOG_DIR, process.pid)
    assert resumed == {step: expected[step]
                       for step in range(killed_at + 1, PHASE_2["max_steps"] + 1)}


@pytest.mark.slow
def test_a_pmap_checkpoint_continues_on_a_mesh_with_the_same_next_loss(
        tmp_path, corpus_file, tokenizer_dir, phase_1):
    losses = {}
    for name, settings in PARALLELISM.items():
        argv, out = phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1, name=name,
                                 max_steps=1, warmup_steps=0, **settings)
        train.main(argv)
        losses[name] = logged_scalars(out)["train/loss"][1]
    assert losses["mesh"] == pytest.approx(losses["pmap"], abs=1e-6)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, corpus_file):
    """A tokenizer with another vocabulary size than phase 1's."""
    path = tmp_path_factory.mktemp("other_tokenizer")
    tokenizer_training.train_wordpiece([corpus_file], vocab_size=1000).save_pretrained(path)
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(init_checkpoint="{tmp}/missing"),
     "error: init_checkpoint {tmp}/missing does not exist: expected a run's output_dir or one "
     "of its checkpoints (checkpoints/STEP)"),
    (dict(init_checkpoint="{phase_1}/checkpoints/3"),
     "error: init_checkpoint {phase_1}/checkpoints/3: step 3 is not a complete checkpoint "
     "(complete: 4)"),
    (dict(optimizer="lamb"),
     "error: init_checkpoint {phase_1}/checkpoints/4 holds the state of optimizer adamw, this "
     "run uses lamb: pass --init_optimizer_state reset to start the optimizer afresh, or "
     "--optimizer adamw"),
    (dict(max_seq_length=128),
     "error: max_seq_length 128 is larger than the model's 64 positions "
     "(max_position_embeddings)"),
    (dict(tokenizer_name="{other_tokenizer}"),
     "error: checkpoint {phase_1}/checkpoints/4: params/bert/embeddings/word_embeddings/"
     "embedding has shape (2000, 32), this model expects (1000, 32): it was written for a "
     "different model configuration"),
], ids=["missing", "incomplete step", "other optimizer", "too long", "other vocabulary"])
def test_what_cannot_continue_is_one_error_line_and_writes_nothing(
        changes, message, tmp_path, corpus_file, tokenizer_dir, phase_1, other_tokenizer,
        capsys, monkeypatch):
    names = dict(tmp=tmp_path, phase_1=phase_1, other_tokenizer=other_tokenizer)
    changes = {key: value.format(**names) if isinstance(value, str) else value
               for key, value in changes.items()}
    argv, out = phase_2_argv(tmp_path, corpus_file, tokenizer_dir, phase_1, **changes)
    before = snapshot(phase_1)
    code, line = run_main(argv, capsys, monkeypatch)
    assert (code, line) == (1, message.format(**names))
    assert not out.exists() and snapshot(phase_1) == before
