"""Per-host sharding, the held-out split and line shuffling, all on whole batches of lines.

Every op here runs once per batch (never once per line), so none of them
limits the pipeline's rate; see DESIGN.md "Batch first, never per line".
"""

import math

import tensorflow as tf

_HASH_BUCKETS = 10_000
_BLANK = "[ \t\n\r\f\v]*"  # ASCII whitespace, as formats.is_blank
_MIX_WINDOW = 8  # batches whose lines are permuted together when shuffling


def host_files(files, process_index, process_count):
    """This host's files, and whether elements must still be sharded (fewer files than hosts)."""
    if len(files) >= process_count:
        return files[process_index::process_count], False
    return files, True


def shard_batches(ds, process_index, process_count):
    """Keep every process_count-th batch: hosts disjoint, union complete, each batch read once."""
    return ds.shard(process_count, process_index) if process_count > 1 else ds


def keep_lines(batch, holdout=None, percentage=0):
    """Drop blank lines and, with a held-out split, the lines of the other side.

    holdout is None (keep all), "train" or "validation". The side of a line
    is a fingerprint of its text, so it is the same on every host and run
    and needs no counting pass; identical lines always land on one side.
    """
    text = batch["text"]
    keep = tf.logical_not(tf.strings.regex_full_match(text, _BLANK))  # cheaper than strip
    if holdout is not None:
        held = tf.strings.to_hash_bucket_fast(text, _HASH_BUCKETS) < int(
            round(percentage * _HASH_BUCKETS / 100))
        keep &= held if holdout == "validation" else tf.logical_not(held)
    return {key: tf.boolean_mask(value, keep) for key, value in batch.items()}


def not_empty(batch):
    return tf.size(batch["text"]) > 0


def shuffle_lines(ds, buffer_lines, batch_size, seed):
    """Bounded shuffle of lines that stays batched.

    A buffer of about buffer_lines lines (as whole batches) picks batches in
    random order, reshuffled each epoch; then the lines of _MIX_WINDOW
    consecutive picked batches are permuted together (stateless, seeded by
    the window's index), so a batch mixes lines from many parts of the
    stream. Batch sizes are kept, so n <= batch_size still holds.
    """
    buffer_batches = max(1, math.ceil(buffer_lines / batch_size))
    ds = ds.shuffle(buffer_batches, seed=seed, reshuffle_each_iteration=True)
    windows = ds.ragged_batch(min(buffer_batches, _MIX_WINDOW)).enumerate()
    return windows.map(
        lambda i, window: _permute_window(window, [seed, i]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _permute_window(window, seed):
    lengths = window["text"].row_lengths()
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.size(window["text"].flat_values)), seed=tf.cast(seed, tf.int64))
    return {
        key: tf.RaggedTensor.from_row_lengths(tf.gather(value.flat_values, order), lengths)
        for key, value in window.items()}
