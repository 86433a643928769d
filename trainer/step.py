"""The data-parallel train and eval steps.

Both are written per device, with explicit collectives over the axis "batch",
so the same functions run under jax.pmap (make_p_train_step/make_p_eval_step)
and under jax.jit(jax.shard_map(...)). Every reduction is a sum plus a
denominator: the loss of a step is the mean over all predicted tokens of all
devices and micro-batches, and its gradient equals that of one big batch.
"""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from trainer.metrics import EvalMetrics, TrainMetrics

AXIS = "batch"
IGNORE_INDEX = -100


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes (and a checkpoint holds), and nothing static."""

    step: jax.Array
    params: Any
    opt_state: Any
    dropout_rng: jax.Array


def create_train_state(params, tx, rng):
    """A fresh state at step 0 (unreplicated; replicate it for pmap)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), dropout_rng=rng)


def _identity(tree):
    return tree


_place_like_pmap_outputs = jax.pmap(_identity, axis_name=AXIS)


def replicate(tree):
    """A copy of tree on every local device, placed exactly as the pmapped steps return it.

    flax.jax_utils.replicate places arrays differently from pmap outputs (since
    JAX 0.10, on a mesh with another axis name), which makes the step compile a
    second time at step 2. Use this for the initial and the restored state.
    """
    count = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(x, (count,) + np.shape(x)),
                           jax.device_get(tree))
    return _place_like_pmap_outputs(stacked)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The step's static settings (changing one recompiles)."""

    label_smoothing: float = 0.0
    gradient_accumulation_steps: int = 1
    skip_nonfinite_updates: bool = False
    full_mlm_head: bool = False

    @classmethod
    def from_args(cls, training_args):
        return cls(label_smoothing=training_args.label_smoothing,
                   gradient_accumulation_steps=training_args.gradient_accumulation_steps,
                   skip_nonfinite_updates=training_args.skip_nonfinite_updates,
                   full_mlm_head=training_args.full_mlm_head)


def dropout_key(rng, step):
    """This device's dropout key for a step: fresh per step and per device, and reproducible."""
    return jax.random.fold_in(jax.random.fold_in(rng, step), lax.axis_index(AXIS))


def token_losses(logits, targets, label_smoothing=0.0):
    """Cross-entropy at each position against integer targets, without a one-hot.

    With smoothing e the target is (1 - e) * one_hot + e / V, whose
    cross-entropy is (1 - e) * nll - e * mean(log_probs) over the vocabulary.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)
    return nll


def _prediction_targets(batch, full_mlm_head):
    """(positions for the head or None, target ids, weights) of the predicted tokens."""
    if full_mlm_head:
        labels = batch["labels"]
        predicted = labels != IGNORE_INDEX
        return None, jnp.where(predicted, labels, 0), predicted.astype(jnp.float32)
    weights = batch["masked_weights"].astype(jnp.float32)
    return batch["masked_positions"], batch["masked_ids"], weights


def _token_sums(apply_fn, params, batch, *, full_mlm_head, label_smoothing=0.0, rngs=None):
    """This device's loss and accuracy sums over predicted tokens, and their count."""
    positions, targets, weights = _prediction_targets(batch, full_mlm_head)
    logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"],
                      token_type_ids=batch.get("token_type_ids"), masked_positions=positions,
                      deterministic=rngs is None, rngs=rngs)
    losses = token_losses(logits, targets, label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weights),
            "correct_sum": jnp.sum(correct * weights),
            "token_count": jnp.sum(weights)}


def _micro_batches(batch, count):
    """[count * B, ...] -> [count, B, ...] for every array of the batch."""
    size = batch["input_ids"].shape[0]
    if size % count:
        raise ValueError(f"per-device batch of {size} examples does not split into "
                         f"gradient_accumulation_steps={count} equal micro-batches")
    return jax.tree.map(lambda x: x.reshape((count, size // count) + x.shape[1:]), batch)


def train_step(state, batch, *, apply_fn, tx, learning_rate_fn, options=StepOptions()):
    """One optimizer step on this device's share of the global batch.

    batch holds gradient_accumulation_steps * B examples per device; they are
    processed B at a time and their sums added, then summed over devices.
    Returns (new_state, TrainMetrics), the metrics identical on every device.
    """
    rng = dropout_key(state.dropout_rng, state.step)
    # Differentiate per device, then psum explicitly: without this cast, shard_map's
    # varying-axes typing would already sum the gradients of replicated parameters.
    per_device_params = lax.pcast(state.params, AXIS, to="varying")

    def sums_and_grads(micro_batch, micro_rng):
        def loss_sum(params):
            sums = _token_sums(apply_fn, params, micro_batch,
                               full_mlm_head=options.full_mlm_head,
                               label_smoothing=options.label_smoothing,
                               rngs={"dropout": micro_rng})
            return sums["loss_sum"], sums
        grads, sums = jax.grad(loss_sum, has_aux=True)(per_device_params)
        return sums, grads

    accumulation = options.gradient_accumulation_steps
    if accumulation == 1:
        sums, grads = sums_and_grads(batch, rng)
    else:
        micro_batches = _micro_batches(batch, accumulation)

        def add_micro_batch(totals, index):
            micro_batch = jax.tree.map(lambda x: x[index], micro_batches)
            result = sums_and_grads(micro_batch, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, totals, result), None

        shapes = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], micro_batches), rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (sums, grads), _ = lax.scan(add_micro_batch, zeros, jnp.arange(accumulation))

    sums, grads = lax.psum((sums, grads), AXIS)
    denominator = jnp.maximum(sums["token_count"], 1.0)
    grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    finite = jnp.isfinite(grad_norm) & jnp.isfinite(sums["loss_sum"])
    if options.skip_nonfinite_updates:
        def unless_nonfinite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params = unless_nonfinite(params, state.params)
        opt_state = unless_nonfinite(opt_state, state.opt_state)

    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = TrainMetrics.single_from_model_output(
        learning_rate=learning_rate_fn(state.step), grad_norm=grad_norm,
        nonfinite=jnp.logical_not(finite).astype(jnp.float32), **sums)
    return new_state, metrics


def eval_step(params, batch, *, apply_fn, options=StepOptions()):
    """Token-weighted loss and accuracy sums over all devices (padding has weight 0)."""
    sums = _token_sums(apply_fn, params, batch, full_mlm_head=options.full_mlm_head)
    return EvalMetrics.single_from_model_output(**lax.psum(sums, AXIS))


def make_p_train_step(apply_fn, tx, learning_rate_fn, options=StepOptions()):
    """train_step pmapped over the local devices; the state argument is donated."""
    step = functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                             learning_rate_fn=learning_rate_fn, options=options)
    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def make_p_eval_step(apply_fn, options=StepOptions()):
    """eval_step pmapped over the local devices."""
    step = functools.partial(eval_step, apply_fn=apply_fn, options=options)
    return jax.pmap(step, axis_name=AXIS)
