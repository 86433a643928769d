"""The stages after reading, on whole batches of lines: epochs, hold out, shuffle.

Each runs once per batch (never once per line), so none limits the
pipeline's rate; see DESIGN.md "Batch first, never per line".
"""

import math

import tensorflow as tf

_HASH_BUCKETS = 10_000
_BLANK = "[ \t\n\r\f\v]*"  # ASCII whitespace, as formats.is_blank
_MIX_WINDOW = 8  # batches whose lines are permuted together when shuffling
_EPOCH_SEED_STRIDE = 1_000_003  # the line buffer's seed is seed + stride * epoch


def repeat_epochs(one_epoch, num_epochs):
    """one_epoch(0), one_epoch(1), ...: num_epochs of them, or endless when None.

    Each epoch is built from its index, so that its order can be a stateless
    function of it (Dataset.repeat replays the same dataset). Like repeat, an
    endless stream ends when an epoch yields nothing, instead of spinning:
    each epoch ends with a marker, and a marker right after another ends it.
    """
    if num_epochs is not None:
        return tf.data.Dataset.range(num_epochs).flat_map(one_epoch)

    def marked(epoch):
        batches = one_epoch(epoch)
        end = tf.nest.map_structure(
            lambda spec: tf.zeros(tf.TensorShape([0]).concatenate(spec.shape[1:]), spec.dtype),
            batches.element_spec)
        return batches.map(lambda batch: (batch, False)).concatenate(
            tf.data.Dataset.from_tensors((end, True)))

    def watch(seen, element):
        batch, end = element
        return tf.logical_not(end), (batch, end, end & tf.logical_not(seen))

    ds = tf.data.Dataset.counter().flat_map(marked).scan(tf.constant(False), watch)
    ds = ds.take_while(lambda batch, end, empty: tf.logical_not(empty))
    return ds.filter(lambda batch, end, empty: tf.logical_not(end)).map(
        lambda batch, end, empty: batch)


def hold_out(ds, holdout, percentage):
    """The hold-out stage: keep_lines on every batch, then batches left empty dropped."""
    return ds.map(lambda batch: keep_lines(batch, holdout, percentage),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).filter(_not_empty)


def keep_lines(batch, holdout=None, percentage=0):
    """Drop blank lines and, with a held-out split, the lines of the other side.

    holdout is None (keep all), "train" or "validation". The side of a line
    is a fingerprint of its text, so it is the same on every host and run
    and needs no counting pass; identical lines always land on one side.
    """
    text = batch["text"]
    keep = tf.logical_not(blank(text))
    if holdout is not None:
        held = tf.strings.to_hash_bucket_fast(text, _HASH_BUCKETS) < int(
            round(percentage * _HASH_BUCKETS / 100))
        keep &= held if holdout == "validation" else tf.logical_not(held)
    return {key: tf.boolean_mask(value, keep) for key, value in batch.items()}


def blank(text):
    """[n] bool: lines of ASCII whitespace only (formats.is_blank's rule), cheaper than strip."""
    return tf.strings.regex_full_match(text, _BLANK)


def _not_empty(batch):
    return tf.size(batch["text"]) > 0


def shuffle_lines(ds, buffer_lines, batch_size, seed, epoch=0):
    """Bounded shuffle of lines that stays batched.

    A buffer of about buffer_lines lines (as whole batches) picks batches in
    random order, reshuffled at each repetition; then the lines of
    _MIX_WINDOW consecutive picked batches are permuted together (stateless,
    seeded by the window's index), so a batch mixes lines from many parts of
    the stream. Batch sizes are kept, so n <= batch_size still holds. epoch
    (a tensor, for epochs built one by one) joins the seeds.
    """
    buffer_batches = max(1, math.ceil(buffer_lines / batch_size))
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    ds = ds.shuffle(buffer_batches, seed=seed + _EPOCH_SEED_STRIDE * tf.cast(epoch, tf.int64),
                    reshuffle_each_iteration=True)
    windows = ds.ragged_batch(min(buffer_batches, _MIX_WINDOW)).enumerate()
    return windows.map(
        lambda i, window: _permute_window(window, tf.random.experimental.stateless_fold_in(
            key, i)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _permute_window(window, seed):
    lengths = window["text"].row_lengths()
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.size(window["text"].flat_values)), seed=seed)
    return {
        key: tf.RaggedTensor.from_row_lengths(tf.gather(value.flat_values, order), lengths)
        for key, value in window.items()}
