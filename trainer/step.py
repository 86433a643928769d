"""The train and eval steps, in a per-device form (pmap) and a global form (jit over a mesh).

With an axis name (default "batch") a step is a per-device function with
explicit collectives, so it runs under jax.pmap (make_p_train_step) and
under jax.jit(jax.shard_map(...)). Without one (axis_name=None) the same
code is a function of the whole global batch, for jax.jit over a Mesh with
sharded parameters (make_mesh_train_step): XLA's partitioner (GSPMD) inserts
the collectives, so FSDP works for every optimizer, including those whose
update needs a whole parameter (Adafactor's factored moments, LAMB's norms,
global-norm clipping). Every reduction is a sum plus a denominator: the loss
of a step is the mean over all predicted tokens of all devices and
micro-batches, and its gradient equals that of one big batch.

Dropout depends on each example's index in the global batch (model.bert.keep_mask),
and micro-batches are strided (micro-batch k holds rows k, k + n, ...), so
the masks, and the members of each micro-batch, are the same whichever
devices hold the batch: both forms, on any number of devices, compute the
same step up to the order of floating-point sums.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from pipeline.errors import UserError
from trainer.metrics import EvalMetrics, TrainMetrics
from trainer.step_options import StepOptions

AXIS = "batch"
IGNORE_INDEX = -100


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes (and a checkpoint holds), and nothing static."""

    step: jax.Array
    params: Any
    opt_state: Any
    dropout_rng: jax.Array


def create_train_state(params, tx, rng):
    """A fresh state at step 0 (unplaced: a feed lays it out for its step)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), dropout_rng=rng)


def example_ids(rows, axis_name=AXIS):
    """Indices in the global batch of this device's `rows` examples (all of them when global).

    Devices hold consecutive blocks of the global batch, in device order, as
    the pipeline's host batches are laid out by either feed.
    """
    first = 0 if axis_name is None else lax.axis_index(axis_name) * rows
    return first + jnp.arange(rows)


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


def _token_sums(apply_fn, params, batch, *, full_mlm_head, label_smoothing=0.0, rngs=None,
                ids=None):
    """The loss and accuracy sums over the batch's predicted tokens, and their count."""
    positions, targets, weights = _prediction_targets(batch, full_mlm_head)
    logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"],
                      token_type_ids=batch.get("token_type_ids"), masked_positions=positions,
                      deterministic=rngs is None, rngs=rngs, example_ids=ids)
    losses = token_losses(logits, targets, label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weights),
            "correct_sum": jnp.sum(correct * weights),
            "token_count": jnp.sum(weights)}


def _micro_batches(tree, count):
    """[count * B, ...] -> [count, B, ...], micro-batch k holding rows k, k + count, ...

    Strided rather than in blocks: a device's rows stay on the device under
    either form, and which examples share a micro-batch does not depend on
    how many devices split the batch.
    """
    size = jax.tree.leaves(tree)[0].shape[0]
    if size % count:
        raise UserError(f"per-device batch of {size} examples does not split into "
                        f"gradient_accumulation_steps={count} equal micro-batches")
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((size // count, count) + x.shape[1:]), 0, 1), tree)


def train_step(state, batch, *, apply_fn, tx, learning_rate_fn, options=StepOptions(),
               axis_name=AXIS, param_shardings=None):
    """One optimizer step.

    With axis_name, `batch` is this device's share and the sums are psum'd
    over the axis; with axis_name=None it is the global batch (under jit, with
    `param_shardings` the gradients' shardings). It holds
    gradient_accumulation_steps micro-batches, processed one at a time and
    their sums added. Returns (new_state, TrainMetrics), the metrics the same
    on every device.
    """
    rng = jax.random.fold_in(state.dropout_rng, state.step)  # the same on every device
    params = state.params
    if axis_name is not None:
        # Differentiate per device, then psum explicitly: without this cast, shard_map's
        # varying-axes typing would already sum the gradients of replicated parameters.
        params = lax.pcast(params, axis_name, to="varying")

    def sums_and_grads(micro_batch, ids):
        def loss_sum(params):
            sums = _token_sums(apply_fn, params, micro_batch,
                               full_mlm_head=options.full_mlm_head,
                               label_smoothing=options.label_smoothing,
                               rngs={"dropout": rng}, ids=ids)
            return sums["loss_sum"], sums
        grads, sums = jax.grad(loss_sum, has_aux=True)(params)
        if param_shardings is not None:  # reduce-scattered as computed, not all-reduced
            grads = lax.with_sharding_constraint(grads, param_shardings)
        return sums, grads

    ids = example_ids(batch["input_ids"].shape[0], axis_name)
    accumulation = options.gradient_accumulation_steps
    if accumulation == 1:
        sums, grads = sums_and_grads(batch, ids)
    else:
        micro_batches = _micro_batches((batch, ids), accumulation)

        def add_micro_batch(totals, micro_batch):
            return jax.tree.map(jnp.add, totals, sums_and_grads(*micro_batch)), None

        shapes = jax.eval_shape(sums_and_grads, *jax.tree.map(lambda x: x[0], micro_batches))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (sums, grads), _ = lax.scan(add_micro_batch, zeros, micro_batches)

    if axis_name is not None:
        sums, grads = lax.psum((sums, grads), axis_name)
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


def eval_step(params, batch, *, apply_fn, options=StepOptions(), axis_name=AXIS):
    """Token-weighted loss and accuracy sums over all devices (padding has weight 0)."""
    sums = _token_sums(apply_fn, params, batch, full_mlm_head=options.full_mlm_head)
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    return EvalMetrics.single_from_model_output(**sums)


def make_p_train_step(apply_fn, tx, learning_rate_fn, options=StepOptions()):
    """train_step pmapped over the local devices; the state argument is donated."""
    step = functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                             learning_rate_fn=learning_rate_fn, options=options)
    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def make_p_eval_step(apply_fn, options=StepOptions()):
    """eval_step pmapped over the local devices."""
    step = functools.partial(eval_step, apply_fn=apply_fn, options=options)
    return jax.pmap(step, axis_name=AXIS)


def make_mesh_train_step(apply_fn, tx, learning_rate_fn, options=StepOptions(), *,
                         state_shardings, batch_sharding, replicated):
    """train_step on global arrays, jitted over a mesh; the state argument is donated.

    The new state keeps the shardings of the old one (no second compilation)
    and the metrics are replicated.
    """
    step = functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                             learning_rate_fn=learning_rate_fn, options=options, axis_name=None,
                             param_shardings=state_shardings.params)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_mesh_eval_step(apply_fn, options=StepOptions(), *, param_shardings, batch_sharding,
                        replicated):
    """eval_step on global arrays, jitted over a mesh."""
    step = functools.partial(eval_step, apply_fn=apply_fn, options=options, axis_name=None)
    return jax.jit(step, in_shardings=(param_shardings, batch_sharding),
                   out_shardings=replicated)
