"""The train and eval steps on 8 CPU devices with the real (tiny) BERT.

Most tests turn dropout off: it makes results comparable with a one-device
reference, and it is what makes a step slow to compile on CPU.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers
from jax.sharding import Mesh, PartitionSpec

import model
from model import bert
from trainer import feed
from trainer import mesh as mesh_lib
from trainer import step as steps
from trainer.args import parse_args
from trainer.metrics import EvalMetrics
from trainer.optimizers import create_optimizer
from trainer.schedules import schedule_from_args

VOCAB, SEQ, PREDICTIONS = 48, 12, 4
DEVICES = 8


def tiny_model(dropout):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=SEQ,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0)
    return model.from_config(config, seed=0)


@pytest.fixture(scope="module")
def no_dropout():
    return tiny_model(0.0)


def make_batch(seed, per_device, predicted=PREDICTIONS, padding_examples=0):
    """A batch in the pipeline's layout [devices, per_device, ...]; the last
    `padding_examples` of each device are weight-0 padding with random ids."""
    rng = np.random.default_rng(seed)
    shape = (DEVICES, per_device)
    ids = rng.integers(5, VOCAB, shape + (SEQ,)).astype(np.int32)
    order = rng.permuted(np.broadcast_to(np.arange(1, SEQ - 1), shape + (SEQ - 2,)), axis=-1)
    positions = np.sort(order[..., :PREDICTIONS], axis=-1).astype(np.int32)
    weights = np.zeros(shape + (PREDICTIONS,), np.float32)
    weights[..., :predicted] = 1.0
    masked_ids = np.take_along_axis(ids, positions, axis=-1) * (weights > 0)
    positions = positions * (weights > 0)
    attention = np.ones_like(ids)
    if padding_examples:
        weights[:, -padding_examples:] = 0.0
        attention[:, -padding_examples:] = 0
    labels = np.full(ids.shape, -100, np.int32)
    for index in np.argwhere(weights > 0):
        d, b, p = index
        labels[d, b, positions[d, b, p]] = masked_ids[d, b, p]
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": np.zeros_like(ids),
            "labels": labels, "masked_positions": positions.astype(np.int32),
            "masked_ids": masked_ids.astype(np.int32), "masked_weights": weights}


def flat(batch):
    """[devices, B, ...] -> [devices * B, ...]: the global batch in order."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)


def constant(value):
    return lambda count: jnp.float32(value)


def sgd_state(params):
    """Plain SGD with rate 1: the parameter change is minus the gradient."""
    tx = optax.sgd(1.0)
    return tx, steps.create_train_state(params, tx, jax.random.PRNGKey(0))


def leaves_close(a, b, atol):
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    assert max(diffs) <= atol, max(diffs)


def first(tree):
    return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def count_compilations():
    """A list that grows by one entry per XLA compilation while the returned
    callback is registered (JAX's backend-compile monitoring event)."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    return compiled, listener


def test_token_losses_match_optax_with_and_without_smoothing():
    logits = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 11)) * 3
    targets = jax.random.randint(jax.random.PRNGKey(2), (3, 5), 0, 11)
    np.testing.assert_allclose(
        steps.token_losses(logits, targets),
        optax.softmax_cross_entropy_with_integer_labels(logits, targets), rtol=1e-6)
    smoothed = optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.1)
    np.testing.assert_allclose(steps.token_losses(logits, targets, 0.1),
                               optax.softmax_cross_entropy(logits, smoothed), rtol=1e-5)


def test_dropout_masks_differ_by_example_and_step_but_not_by_device():
    """Masks are drawn per (step, example, position): fresh per step and per example,
    reproducible, and an example's mask is the same whichever device holds it."""
    per_device, shape = 2, (DEVICES * 2, 5, 6)

    def masks(step):
        rng = jax.random.fold_in(jax.random.PRNGKey(3), step)
        whole = np.asarray(bert.keep_mask(rng, shape, 0.5))  # every example on one device
        split = jax.pmap(lambda _: bert.keep_mask(rng, (per_device,) + shape[1:], 0.5,
                                                  steps.example_ids(per_device)),
                         axis_name=steps.AXIS)(np.arange(DEVICES))
        np.testing.assert_array_equal(np.asarray(split).reshape(shape), whole)
        return whole

    step0, step1 = masks(0), masks(1)
    rows = np.concatenate([step0, step1]).reshape(2 * shape[0], -1)
    assert len({row.tobytes() for row in rows}) == 2 * shape[0]
    np.testing.assert_array_equal(step0, masks(0))
    assert 0.4 < step0.mean() < 0.6


@pytest.fixture(scope="module")
def sgd_step(no_dropout):
    module, params = no_dropout
    tx, state = sgd_state(params)
    return module, tx, state, steps.make_p_train_step(module.apply, tx, constant(1.0))


def test_train_step_equals_one_big_batch_on_one_device(sgd_step):
    module, tx, state, p_train_step = sgd_step
    batch = make_batch(0, per_device=2, predicted=3)
    batch["masked_weights"][::2, :, 1:] = 0.0  # devices predict different numbers of tokens
    new_state, metrics = p_train_step(feed.replicate(state), batch)

    big = flat(batch)

    def mean_loss(params):
        logits = module.apply({"params": params}, big["input_ids"], big["attention_mask"],
                              big["token_type_ids"], masked_positions=big["masked_positions"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, big["masked_ids"])
        return jnp.sum(losses * big["masked_weights"]) / jnp.sum(big["masked_weights"])

    loss, grads = jax.value_and_grad(mean_loss)(state.params)
    expected = jax.tree.map(lambda p, g: p - g, state.params, grads)
    computed = first(metrics).compute()
    np.testing.assert_allclose(computed["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(computed["grad_norm"], optax.global_norm(grads), rtol=1e-5)
    assert computed["predicted_tokens"] == big["masked_weights"].sum()
    leaves_close(first(new_state.params), expected, atol=1e-6)
    np.testing.assert_array_equal(new_state.step, np.ones(DEVICES))


def test_gradient_accumulation_equals_one_big_batch(sgd_step, no_dropout):
    module, tx, state, p_train_step = sgd_step
    batch = make_batch(1, per_device=4, predicted=2)
    batch["masked_weights"][:, 1, :] = 1.0  # micro-batches of unequal token counts
    whole_state, whole_metrics = p_train_step(feed.replicate(state), batch)

    options = steps.StepOptions(gradient_accumulation_steps=4)
    p_accumulating = steps.make_p_train_step(module.apply, tx, constant(1.0), options)
    accum_state, accum_metrics = p_accumulating(feed.replicate(state), batch)

    leaves_close(first(accum_state.params), first(whole_state.params), atol=1e-6)
    for name, value in first(whole_metrics).compute().items():
        np.testing.assert_allclose(first(accum_metrics).compute()[name], value, rtol=1e-6,
                                   err_msg=name)


@pytest.fixture(scope="module", params=["pmap", "mesh"])
def sgd_layout(request, sgd_step):
    """(feed, its compiled SGD step) for pmap and for a data=2,fsdp=4 mesh."""
    module, tx, state, p_train_step = sgd_step
    if request.param == "pmap":
        return feed.PmapFeed(), p_train_step
    layout = feed.MeshFeed(mesh_lib.create_mesh({"data": 2, "fsdp": 4}))
    return layout, layout.train_step(state, module.apply, tx, constant(1.0), steps.StepOptions())


def test_no_recompilation_after_the_first_step(sgd_step, sgd_layout):
    """Counts XLA compilations: none once the first step has run (pmap and mesh)."""
    state = sgd_step[2]
    layout, train_step = sgd_layout
    batches = [layout.place_batch(flat(make_batch(seed, per_device=2))) for seed in range(4)]
    state, _ = train_step(layout.place_state(state), batches[0])
    compiled, listener = count_compilations()
    try:
        jax.jit(lambda x: x * 3 + 1)(np.arange(3.0)).block_until_ready()
        assert len(compiled) == 1  # the counter does see a compilation
        for batch in batches[1:]:
            state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled[1:] == []


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN loss
def test_nonfinite_update_is_counted_and_skipped_when_asked(sgd_step):
    module, tx, state, p_train_step = sgd_step
    bad = make_batch(2, per_device=2)
    bad["masked_weights"][0, 0, 0] = np.inf

    applied, metrics = p_train_step(feed.replicate(state), bad)
    assert first(metrics).compute()["nonfinite_updates"] == 1
    assert not np.all(np.isfinite(jax.tree.leaves(first(applied.params))[0]))

    options = steps.StepOptions(skip_nonfinite_updates=True)
    p_skipping = steps.make_p_train_step(module.apply, tx, constant(1.0), options)
    skipped, metrics = p_skipping(feed.replicate(state), bad)
    assert first(metrics).compute()["nonfinite_updates"] == 1
    leaves_close(first(skipped.params), state.params, atol=0)
    assert int(first(skipped.step)) == 1
    good, metrics = p_skipping(skipped, make_batch(3, per_device=2))
    assert first(metrics).compute()["nonfinite_updates"] == 0
    assert not np.allclose(first(good.params)["cls"]["predictions"]["bias"],
                           state.params["cls"]["predictions"]["bias"])


@pytest.mark.slow  # two compilations with dropout: about 20 s on 2 busy cores
def test_pmap_and_shard_map_give_the_same_step_with_dropout():
    """The same per-device function under pmap and jit(shard_map), real optimizer, dropout on."""
    module, params = tiny_model(0.1)
    _, _, training_args = parse_args(["--output_dir", "unused", "--weight_decay", "0.01",
                                      "--warmup_steps", "2", "--learning_rate", "1e-3"])
    schedule = schedule_from_args(training_args, total_steps=10)
    tx = create_optimizer(training_args, schedule)
    state = steps.create_train_state(params, tx, jax.random.PRNGKey(5))
    batch = make_batch(4, per_device=2)
    state = state.replace(step=jnp.int32(1))  # a non-zero learning rate

    by_pmap, pmap_metrics = steps.make_p_train_step(module.apply, tx, schedule)(
        feed.replicate(state), batch)

    mesh = Mesh(np.array(jax.devices()), (steps.AXIS,))
    per_device = functools.partial(steps.train_step, apply_fn=module.apply, tx=tx,
                                   learning_rate_fn=schedule)
    sharded = jax.jit(jax.shard_map(
        per_device, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(steps.AXIS)),
        out_specs=(PartitionSpec(), PartitionSpec())))
    by_shard_map, shard_map_metrics = sharded(state, flat(batch))

    expected = first(pmap_metrics).compute()
    for name, value in shard_map_metrics.compute().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, err_msg=name)
    assert expected["learning_rate"] == pytest.approx(5e-4)
    leaves_close(by_shard_map.params, first(by_pmap.params), atol=1e-7)
    leaves_close(by_shard_map.opt_state, first(by_pmap.opt_state), atol=1e-7)
    # Dropout is on: the training loss differs from the deterministic one.
    eval_loss = steps.make_p_eval_step(module.apply)(
        feed.replicate(params), batch).unreplicate().compute()["loss"]
    assert abs(eval_loss - expected["loss"]) > 1e-4


def test_eval_sums_weight_out_padding_and_merge_token_weighted(no_dropout):
    module, params = no_dropout
    p_eval_step = steps.make_p_eval_step(module.apply)
    replicated = feed.replicate(params)
    batch = make_batch(6, per_device=3, padding_examples=1)
    garbage = {key: value.copy() for key, value in batch.items()}  # other padding content
    garbage["input_ids"][:, -1] = 7
    garbage["masked_ids"][:, -1] = 9

    one = p_eval_step(replicated, batch).unreplicate()
    np.testing.assert_allclose(
        p_eval_step(replicated, garbage).unreplicate().compute()["loss"],
        one.compute()["loss"], rtol=1e-6)

    few = make_batch(8, per_device=3, predicted=1)
    merged = one.merge(p_eval_step(replicated, few).unreplicate()).compute()
    token_losses, weights = [], []
    for b in (batch, few):
        big = flat(b)
        logits = module.apply({"params": params}, big["input_ids"], big["attention_mask"],
                              big["token_type_ids"], masked_positions=big["masked_positions"])
        token_losses.append(steps.token_losses(logits, big["masked_ids"]).ravel())
        weights.append(big["masked_weights"].ravel())
    token_losses, weights = np.concatenate(token_losses), np.concatenate(weights)
    mean = np.sum(token_losses * weights) / np.sum(weights)
    np.testing.assert_allclose(merged["loss"], mean, rtol=1e-5)
    np.testing.assert_allclose(merged["perplexity"], np.exp(mean), rtol=1e-5)
    assert merged["predicted_tokens"] == weights.sum()
    assert isinstance(one, EvalMetrics)


def test_full_head_on_labels_equals_masked_gather(no_dropout):
    module, params = no_dropout
    replicated = feed.replicate(params)
    batch = make_batch(9, per_device=2, predicted=3, padding_examples=1)
    gathered = steps.make_p_eval_step(module.apply)(replicated, batch)
    full = steps.make_p_eval_step(module.apply, steps.StepOptions(full_mlm_head=True))(
        replicated, batch)
    for name, value in gathered.unreplicate().compute().items():
        np.testing.assert_allclose(full.unreplicate().compute()[name], value, rtol=1e-5,
                                   err_msg=name)


def test_replicate_places_state_like_the_step_outputs(sgd_step):
    module, tx, state, p_train_step = sgd_step
    replicated = feed.replicate(state)
    new_state, _ = p_train_step(feed.replicate(state), make_batch(10, per_device=2))
    assert replicated.params["cls"]["predictions"]["bias"].sharding == \
        new_state.params["cls"]["predictions"]["bias"].sharding
    assert flax.jax_utils.unreplicate(replicated).step == 0
