"""The mesh path: its shape and sharding rule, its memory, and agreement with the pmap step.

The steps run through the feeds exactly as train.py drives them, on 8 CPU
devices: pmap, `mesh data=8` and `mesh data=2,fsdp=4` train the same model on
the same batches, with dropout and gradient accumulation, and must agree.
"""

import os
import shutil

import jax
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec

import model
import train
import train_runs
from trainer import feed, mesh as mesh_lib, run_dir
from trainer import step as steps
from trainer.args import parse_args
from trainer.optimizers import create_optimizer
from trainer.schedules import schedule_from_args

from test_step import DEVICES, VOCAB, SEQ, flat, make_batch

AGREEMENT_STEPS = 5
RTOL = 1e-6


@pytest.mark.parametrize("text, devices, expected", [
    ("data=-1", 8, {"data": 8, "fsdp": 1}),
    ("data=-1,fsdp=4", 8, {"data": 2, "fsdp": 4}),
    ("fsdp=8", 8, {"data": 1, "fsdp": 8}),
    ("fsdp=4", 8, {"data": 2, "fsdp": 4}),  # data takes the rest unless told
    (" fsdp = -1 , data=2", 8, {"data": 2, "fsdp": 4}),
    ("fsdp=-1", 8, {"data": 1, "fsdp": 8}),
])
def test_mesh_shape(text, devices, expected):
    assert mesh_lib.resolve_mesh_shape(text, devices) == expected


@pytest.mark.parametrize("text, message", [
    ("data=3", "'data=3' does not fit the 8 devices of this run: the sizes must multiply to 8"),
    ("data=-1,fsdp=3", "does not fit the 8 devices"),
    ("fsdp=16", "does not fit the 8 devices"),
    ("data=2,fsdp", "expected comma-separated AXIS=SIZE"),
    ("model=2", "expected comma-separated AXIS=SIZE"),
    ("data=2,data=4", "expected comma-separated AXIS=SIZE"),
    ("data=-1,fsdp=-1", "at most one may be -1"),
    ("fsdp=0", "each size must be a positive integer"),
])
def test_bad_mesh_shape_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        mesh_lib.resolve_mesh_shape(text, 8)


def test_fsdp_splits_the_largest_dimension_it_divides():
    assert mesh_lib.fsdp_spec((30522, 768), 8) == PartitionSpec(None, "fsdp")  # 30522 % 8 != 0
    assert mesh_lib.fsdp_spec((1024, 4096), 4) == PartitionSpec(None, "fsdp")
    assert mesh_lib.fsdp_spec((768, 768), 4) == PartitionSpec("fsdp", None)  # the first
    assert mesh_lib.fsdp_spec((37,), 4) == PartitionSpec()  # nothing fits: whole
    assert mesh_lib.fsdp_spec((), 4) == PartitionSpec()
    assert mesh_lib.fsdp_spec((64, 64), 1) == PartitionSpec()
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 4})
    tree = {"fits": jax.ShapeDtypeStruct((8, 3), np.float32),
            "whole": jax.ShapeDtypeStruct((37,), np.float32),
            "scalar": jax.ShapeDtypeStruct((), np.int32)}
    assert mesh_lib.replicated_bytes(tree, mesh) == 37 * 4


def bert(dropout, intermediate_size=32):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=intermediate_size, max_position_embeddings=SEQ,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return model.from_config(config, seed=0)


def adamw(*flags):
    _, _, training_args = parse_args(["--output_dir", "unused", "--weight_decay", "0.01",
                                      "--warmup_steps", "2", "--learning_rate", "1e-3",
                                      *flags])
    schedule = schedule_from_args(training_args, total_steps=10)
    return create_optimizer(training_args, schedule), schedule, training_args


def layout(shape):
    return feed.PmapFeed() if shape == "pmap" else feed.MeshFeed(
        mesh_lib.create_mesh(mesh_lib.resolve_mesh_shape(shape, DEVICES)))


def test_fsdp8_holds_at_most_a_seventh_of_pmaps_bytes_per_device():
    """Parameters + optimizer state on one device, from the arrays' own shards."""
    module, params = bert(0.0, intermediate_size=37)  # a bias of 37: left whole
    tx, _, _ = adamw()
    rng = jax.random.PRNGKey(0)
    replicated = feed.PmapFeed().init_state(params, tx, rng)
    sharded = layout("fsdp=8").init_state(params, tx, rng)
    assert sharded.params["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"][
        "bias"].sharding.is_fully_replicated
    full = feed.bytes_on_device((replicated.params, replicated.opt_state))
    share = feed.bytes_on_device((sharded.params, sharded.opt_state))
    assert full >= 3 * sum(x.nbytes for x in jax.tree.leaves(params))  # params + 2 moments
    assert share <= full / 7, (share, full)


def train_five_steps(shape, module, params, optimizer, options, batches):
    """Losses and final host parameters of AGREEMENT_STEPS steps through a feed."""
    tx, schedule = optimizer
    devices = layout(shape)
    state = devices.init_state(params, tx, jax.random.PRNGKey(5))
    train_step = devices.train_step(state, module.apply, tx, schedule, options)
    losses = []
    for batch in batches:
        state, metrics = train_step(state, devices.place_batch(batch))
        losses.append(float(devices.to_host(metrics).compute()["loss"]))
    return np.array(losses), devices.to_host(state.params)


@pytest.mark.slow  # three compilations of a dropout step with accumulation: ~40 s on 2 cores
def test_pmap_and_meshes_agree_with_dropout_and_accumulation():
    module, params = bert(0.1)
    tx, schedule, training_args = adamw("--gradient_accumulation_steps", "2")
    options = steps.StepOptions.from_args(training_args)
    batches = [flat(make_batch(seed, per_device=4)) for seed in range(AGREEMENT_STEPS)]
    runs = {shape: train_five_steps(shape, module, params, (tx, schedule), options, batches)
            for shape in ("pmap", "data=8", "data=2,fsdp=4")}
    losses, final = runs.pop("pmap")
    deterministic = steps.make_p_eval_step(module.apply)(
        feed.replicate(params), jax.tree.map(lambda x: x.reshape((DEVICES, -1) + x.shape[1:]),
                                             batches[0])).unreplicate().compute()["loss"]
    assert abs(losses[0] - deterministic) > 1e-4  # dropout is on
    for shape, (mesh_losses, mesh_final) in runs.items():
        np.testing.assert_allclose(mesh_losses, losses, rtol=RTOL, err_msg=shape)
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(mesh_final),
                                     jax.tree.leaves(final)):
            name = jax.tree_util.keystr(path)
            if name.endswith("['key']['bias']"):
                # Softmax over keys ignores a key bias (it adds q.b to every logit alike): its
                # gradient is 0 but for rounding, which Adam scales up to values ~1e-8. Noise.
                assert np.abs(got).max() < 1e-6 and np.abs(want).max() < 1e-6, name
                continue
            # Relative to each parameter's scale: elements near 0 are as exact as the others.
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max(),
                                       err_msg=f"{shape} {name}")


# Elastic resume: train.py runs through one output_dir on changing meshes and device counts.

ELASTIC_LEG = 5  # steps per run of the chain


def elastic_config(corpus_file, tokenizer_dir):
    return train_runs.tiny_config(  # dropout on (BERT's 0.1)
        corpus_file, tokenizer_dir,
        global_train_batch_size=32,  # the host batch stays the same on 8 and on 4 devices
        gradient_accumulation_steps=2, learning_rate=3e-3, weight_decay=0.01, warmup_steps=2,
        lr_schedule="constant * linear_warmup",  # so max_steps may grow between runs
        save_steps=ELASTIC_LEG, seed=2)


def run_on(tmp_path, config, devices, name, **settings):
    """(pid, console) of a train.py subprocess on `devices` CPU devices; it must succeed."""
    config_file = train_runs.write_config(tmp_path / f"{name}.json", dict(config, **settings),
                                          tmp_path / "run")
    env = dict(os.environ, XLA_FLAGS=train_runs.xla_flags(devices))
    process = train_runs.start(config_file, env=env)
    code, console = train_runs.finish(process, timeout=300)
    assert code == 0, console[-3000:]
    return process.pid, console


@pytest.mark.slow  # an in-process reference and three train.py runs: ~5 min on 2 busy cores
def test_elastic_resume_across_meshes_device_counts_and_pmap(tmp_path, corpus_file,
                                                             tokenizer_dir):
    """8 devices data=2,fsdp=4 -> 4 devices data=4 -> 4 devices pmap -> 8 devices again.

    The chain starts from the step-5 checkpoint of a run that never stopped (8
    devices, data=2,fsdp=4); after every change, the next steps' losses equal
    that run's to 1e-6.
    """
    config = elastic_config(corpus_file, tokenizer_dir)
    on_eight = {"parallelism": "mesh", "mesh_shape": "data=2,fsdp=4"}
    legs = [(4, {"parallelism": "mesh", "mesh_shape": "data=4"}), (4, {}), (8, on_eight)]
    total = ELASTIC_LEG * (len(legs) + 1)
    reference_dir = tmp_path / "reference"
    train.main([train_runs.write_config(tmp_path / "reference.json",
                                        dict(config, max_steps=total, **on_eight),
                                        reference_dir)])
    expected = train_runs.step_losses(reference_dir / run_dir.LOG_DIR, os.getpid())
    assert sorted(expected) == list(range(1, total + 1))

    shutil.copytree(reference_dir, tmp_path / "run")  # the chain resumes from step 5
    for step in range(2 * ELASTIC_LEG, total + 1, ELASTIC_LEG):
        shutil.rmtree(tmp_path / "run" / run_dir.CHECKPOINT_DIR / str(step))
    for leg, (devices, settings) in enumerate(legs, start=1):
        pid, console = run_on(tmp_path, config, devices, f"leg{leg}",
                              max_steps=ELASTIC_LEG * (leg + 1), **settings)
        assert f"Resuming from the checkpoint of step {leg * ELASTIC_LEG}" in console
        losses = train_runs.step_losses(tmp_path / "run" / run_dir.LOG_DIR, pid)
        assert sorted(losses) == list(range(leg * ELASTIC_LEG + 1, (leg + 1) * ELASTIC_LEG + 1))
        for step, loss in losses.items():
            assert loss == pytest.approx(expected[step], rel=RTOL), (leg, step)
