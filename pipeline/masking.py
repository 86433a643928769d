"""Masked-language-model masking of whole batches with stateless random ops.

Every random number comes from `tf.random.stateless_*` seeded by the run
seed, the host and the batch's position in the stream, so the pipeline is
deterministic, its iterator state can be checkpointed, and each epoch (a
later position) gets fresh masks.

Per example, google-research/bert's rule picks
`min(max_predictions_per_seq, max(1, round(n_real * mlm_probability)))`
predictions among the non-special, non-pad tokens. Units are single tokens,
or whole words (a word start and its continuations) when whole-word
masking is on: units are taken in a random order while they fit in the
budget (a unit larger than the budget is never taken), which for single
tokens is exactly a uniform choice. Of the chosen tokens `mask_replace_prob`
become the mask token, `random_replace_prob` a random non-special id, and
the rest stay.
"""

import numpy as np
import tensorflow as tf

IGNORE_INDEX = -100


def _unit_ids(candidate, word_starts, whole_words):
    """Numbers the masking units of each row 0, 1, ... in order; -1 off the candidates."""
    previous = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
    starts = candidate & ~previous
    if whole_words:
        starts |= candidate & word_starts
    else:
        starts = candidate
    unit = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
    return tf.where(candidate, unit, -1)


def _choose(candidate, unit, budget, max_predictions, seed):
    """Selects whole units in a random order while the running token count fits the budget.

    At most max_predictions units can fit (each has a token), so one top_k of
    random unit keys gives the random order; no full sort is needed.
    """
    batch, length = tf.shape(unit)[0], tf.shape(unit)[1]
    rows = tf.range(batch)[:, None] * length
    segments = tf.reshape(tf.where(candidate, rows + unit, batch * length), [-1])
    sizes = tf.math.unsorted_segment_sum(
        tf.ones_like(segments), segments, batch * length + 1)[:-1]
    sizes = tf.reshape(sizes, [batch, length])
    usable = (sizes > 0) & (sizes <= budget[:, None])
    keys = tf.where(usable, tf.random.stateless_uniform([batch, length], seed), -1.0)
    keys = tf.pad(keys, [[0, 0], [0, tf.maximum(0, max_predictions - length)]],
                  constant_values=-1.0)
    top_keys, order = tf.math.top_k(keys, k=max_predictions, sorted=True)
    order_sizes = tf.gather(tf.pad(sizes, [[0, 0], [0, tf.shape(keys)[1] - length]]), order,
                            batch_dims=1)
    taken = (tf.cumsum(order_sizes, axis=1) <= budget[:, None]) & (top_keys >= 0)
    # A per-unit table of taken flags (column `length` for "none"), read back per token.
    table_rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(order))
    slots = tf.stack([table_rows, tf.where(taken, order, length)], axis=-1)
    table = tf.scatter_nd(slots, tf.cast(taken, tf.int32), [batch, length + 1])
    flat_units = tf.where(candidate, unit, length) + table_rows[:, :1] * (length + 1)
    return tf.gather(tf.reshape(table, [-1]), flat_units) > 0


def _gather_form(chosen, max_predictions):
    """The chosen positions of each row in increasing order, padded to max_predictions.

    Also returns each token's slot (its rank among the row's chosen tokens).
    Slot k holds the first position whose running count reaches k + 1: a
    binary search per slot, much cheaper than a top_k or a scatter on CPU.
    """
    batch = tf.shape(chosen)[0]
    running = tf.cumsum(tf.cast(chosen, tf.int32), axis=1)
    ranks = tf.broadcast_to(tf.range(1, max_predictions + 1)[None, :], [batch, max_predictions])
    weights = ranks <= running[:, -1:]
    positions = tf.searchsorted(running, ranks, side="left", out_type=tf.int32)
    return tf.where(weights, positions, 0), weights, running - 1


def masker(vocab, config, *, whole_words, process_index=0):
    """Returns fn(index, batch) -> MLM features for batches {"input_ids", "word_starts"}.

    `index` is the batch's position in the stream (from `Dataset.enumerate`);
    `whole_words` picks whole-word units instead of single tokens. Hosts get
    different masks for the same position.
    """
    stream_seed = tf.constant([config.seed, process_index], tf.int64)
    is_special = tf.constant(vocab.is_special)
    replacements = tf.constant(np.flatnonzero(~vocab.is_special), tf.int32)
    max_predictions = config.max_predictions_per_seq
    mask_prob = config.mask_replace_prob
    random_prob = config.mask_replace_prob + config.random_replace_prob
    if not 0 <= mask_prob <= random_prob <= 1:
        raise ValueError(
            "mask_replace_prob + random_replace_prob must lie in [0, 1], got "
            f"{config.mask_replace_prob} + {config.random_replace_prob}")

    def mask(index, batch):
        ids = batch["input_ids"]
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(stream_seed, index), 3)
        real = ids != vocab.pad_id
        candidate = ~tf.gather(is_special, ids)
        n_real = tf.reduce_sum(tf.cast(real, tf.float32), axis=1)
        budget = tf.cast(tf.round(n_real * config.mlm_probability), tf.int32)
        budget = tf.minimum(max_predictions, tf.maximum(1, budget))
        unit = _unit_ids(candidate, batch["word_starts"], whole_words)
        chosen = _choose(candidate, unit, budget, max_predictions, seeds[0])

        positions, weights, slot = _gather_form(chosen, max_predictions)
        originals = tf.where(weights, tf.gather(ids, positions, batch_dims=1), 0)

        # 80/10/10 is drawn for the max_predictions slots only, then read back per token.
        action = tf.random.stateless_uniform(tf.shape(positions), seeds[1])
        random_ids = tf.gather(replacements, tf.random.stateless_uniform(
            tf.shape(positions), seeds[2], maxval=tf.size(replacements), dtype=tf.int32))
        shown = tf.where(action < mask_prob, vocab.mask_id,
                         tf.where(action < random_prob, random_ids, originals))
        rows = tf.range(tf.shape(ids)[0])[:, None] * max_predictions
        shown = tf.gather(tf.reshape(shown, [-1]), rows + tf.maximum(slot, 0))
        return {
            "input_ids": tf.where(chosen, shown, ids),
            "attention_mask": tf.cast(real, tf.int32),
            "token_type_ids": tf.zeros_like(ids),
            "labels": tf.where(chosen, ids, IGNORE_INDEX),
            "masked_positions": positions,
            "masked_ids": originals,
            "masked_weights": tf.cast(weights, tf.float32),
        }

    return mask
