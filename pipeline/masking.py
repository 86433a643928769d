"""Masked-language-model masking of whole batches with stateless random ops.

Every random number comes from `tf.random.stateless_*` seeded by the run
seed, the host and the batch's position in the stream, so the pipeline is
deterministic, its iterator state can be checkpointed, and each epoch (a
later position) gets fresh masks.

Per example, google-research/bert's rule picks
`min(max_predictions_per_seq, max(1, round(n_real * mlm_probability)))`
predictions among the non-special, non-pad tokens: single tokens chosen
uniformly, or with whole-word masking whole words (a word start and its
continuations) taken in a random order while they fit in the budget. A row
whose words are all larger than its budget (a short line of multi-character
Chinese words, say) still gets one word, a smallest one, so that every row
with a word of at most max_predictions_per_seq tokens is predicted at least
once, as the single-token rule promises. Of the chosen tokens
`mask_replace_prob` become the mask token, `random_replace_prob` a random
non-special id, and the rest stay.

This stage runs on every training token, so it avoids the ops that are slow
on CPU (sorts, top_k over long rows, cumsums): see `_choose_tokens`.
"""

import numpy as np
import tensorflow as tf

IGNORE_INDEX = -100


def _word_ids(candidate, word_starts):
    """Numbers the words among each row's candidates 0, 1, ... in order; -1 off them."""
    previous = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
    starts = candidate & (word_starts | ~previous)
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
    return tf.where(candidate, word, -1)


def _choose_words(candidate, word_starts, budget, max_predictions, seed):
    """Selects whole words in a random order while the running token count fits the budget.

    At most max_predictions words can fit (each has a token), so one top_k of
    random word keys gives the random order; no full sort is needed.
    """
    unit = _word_ids(candidate, word_starts)
    batch, length = tf.shape(unit)[0], tf.shape(unit)[1]
    rows = tf.range(batch)[:, None] * length
    segments = tf.reshape(tf.where(candidate, rows + unit, batch * length), [-1])
    sizes = tf.math.unsorted_segment_sum(
        tf.ones_like(segments), segments, batch * length + 1)[:-1]
    sizes = tf.reshape(sizes, [batch, length])
    budget = _at_least_one_word(sizes, budget, max_predictions)
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


def _at_least_one_word(sizes, budget, max_predictions):
    """Each row's budget, raised to its smallest word's size where no word fits in it.

    Capped at max_predictions (the gather form's width): a row whose every
    word is longer than that gets no prediction.
    """
    words = sizes > 0
    smallest = tf.reduce_min(tf.where(words, sizes, max_predictions + 1), axis=1)
    fits = tf.reduce_any(words & (sizes <= budget[:, None]), axis=1)
    return tf.where(fits, budget, tf.minimum(smallest, max_predictions))


def _choose_tokens(candidate, budget, max_predictions, position_bits, seed):
    """Selects min(budget, candidates) tokens of each row, uniformly at random.

    Candidates get distinct random keys (random high bits, the position in
    the low `position_bits`) and each row takes its `budget` largest. Adding
    max_predictions - budget keys above all others to a row makes that
    threshold the row's max_predictions-th largest key, the same rank in
    every row: one NthElement finds it, at half the cost of a top_k.
    """
    batch, length = tf.shape(candidate)[0], tf.shape(candidate)[1]
    bits = tf.random.stateless_uniform([batch, length], seed, minval=None, maxval=None,
                                       dtype=tf.int32)
    high = tf.bitwise.bitwise_and(bits, 0x7FFFFFFF ^ ((1 << position_bits) - 1))  # >= 0
    keys = tf.where(candidate, tf.bitwise.bitwise_or(high, tf.range(length)[None, :]), -1)
    above = tf.where(tf.range(max_predictions)[None, :] < (max_predictions - budget)[:, None],
                     tf.int32.max, -1)
    threshold = tf.raw_ops.NthElement(input=tf.concat([keys, above], axis=1),
                                      n=max_predictions - 1, reverse=True)
    return candidate & (keys >= threshold[:, None])


def mask(ds, vocab, config, *, whole_words, process_index=0, passed_on=()):
    """The masking stage: MLM features of each batch {"input_ids", "word_starts"} of `ds`.

    Each batch is masked by its position in `ds` (`masker`); the keys in
    `passed_on` (a mixture's tags) are carried over unchanged.
    """
    mask_batch = masker(vocab, config, whole_words=whole_words, process_index=process_index)

    def masked(index, batch):
        return {**mask_batch(index, batch), **{key: batch[key] for key in passed_on}}

    return ds.enumerate().map(masked, num_parallel_calls=tf.data.AUTOTUNE)


def by_whole_words(config, ref_file):
    """Whether a split is masked by whole words: asked, or Chinese words known.

    Chinese words come from the split's reference file `ref_file`, or from
    segmentation on the fly.
    """
    return bool(config.whole_word_masking or ref_file or config.chinese_word_segmentation)


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
    position_bits = max(1, (config.max_seq_length - 1).bit_length())
    mask_prob = config.mask_replace_prob
    random_prob = config.mask_replace_prob + config.random_replace_prob

    def mask(index, batch):
        ids = batch["input_ids"]
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(stream_seed, index), 3)
        real = ids != vocab.pad_id
        candidate = ~tf.gather(is_special, ids)
        n_real = tf.reduce_sum(tf.cast(real, tf.float32), axis=1)
        budget = tf.cast(tf.round(n_real * config.mlm_probability), tf.int32)
        budget = tf.minimum(max_predictions, tf.maximum(1, budget))
        if whole_words:
            chosen = _choose_words(candidate, batch["word_starts"], budget, max_predictions,
                                   seeds[0])
        else:
            chosen = _choose_tokens(candidate, budget, max_predictions, position_bits,
                                    seeds[0])

        # Row and position of every chosen token, in row-major order; 80/10/10 drawn per token.
        where = tf.where(chosen)
        originals = tf.gather_nd(ids, where)
        count = tf.shape(where)[:1]
        action = tf.random.stateless_uniform(count, seeds[1])
        random_ids = tf.gather(replacements, tf.random.stateless_uniform(
            count, seeds[2], maxval=tf.size(replacements), dtype=tf.int32))
        shown = tf.where(action < mask_prob, vocab.mask_id,
                         tf.where(action < random_prob, random_ids, originals))
        gathered = tf.RaggedTensor.from_value_rowids(
            tf.stack([tf.cast(where[:, 1], tf.int32), originals], axis=1), where[:, 0],
            nrows=tf.shape(ids, out_type=tf.int64)[0], validate=False)
        weights = tf.range(max_predictions, dtype=tf.int64)[None, :] < (
            gathered.row_lengths()[:, None])
        gathered = gathered.to_tensor(shape=[None, max_predictions, 2])
        return {
            "input_ids": tf.tensor_scatter_nd_update(ids, where, shown),
            "attention_mask": tf.cast(real, tf.int32),
            "token_type_ids": tf.zeros_like(ids),
            "labels": tf.where(chosen, ids, IGNORE_INDEX),
            "masked_positions": gathered[:, :, 0],
            "masked_ids": gathered[:, :, 1],
            "masked_weights": tf.cast(weights, tf.float32),
        }

    return mask
