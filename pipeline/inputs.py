"""What the trainer calls: per-host training and evaluation batches for masked LM.

The pipeline's stages, in order, are the bodies of `train_dataset`,
`eval_dataset` and `_examples`: one line per stage, each a Dataset ->
Dataset function of the stage's module, on whole batches of lines:
read -> host split -> parse -> hold out -> shuffle (`sources.read_lines`,
epoch after epoch) -> tokenize -> pack (`_examples`) -> batch -> mask
(stateless, seeded by position) -> static shapes -> prefetch.

Every element is a host batch: a dict of tensors shaped [local_device_count *
per_device_batch_size, width] (trainer/feed.py lays it out on the devices,
for pmap or a mesh): input_ids, attention_mask, token_type_ids and
labels (-100 where nothing is predicted) of width max_seq_length, and the
gather form masked_positions, masked_ids and masked_weights (float32; 0 for
padding) of width max_predictions_per_seq. Padding examples have weight 0.
The training iterator's state is checkpointable with tf.train.Checkpoint:
the tokenizer call is a pure `numpy_function`, so the external-state policy
is IGNORE, and all randomness is stateless.

The stages are written as graph code (tf.cond, tf.while_loop, no Python
branching on tensors), so AutoGraph's conversion of every mapped function,
seconds at each start of a run, is off for the datasets built here
(`do_not_convert` on the functions that build them).
"""

import tensorflow as tf

from pipeline import masking, mixture, pack, python_calls, sources, tokenize
from pipeline.tokenizer_files import load_tokenizer  # noqa: F401  (the trainer's entry to it)

_FEATURES = ("input_ids", "attention_mask", "token_type_ids", "labels", "masked_positions",
             "masked_ids", "masked_weights")


@tf.autograph.experimental.do_not_convert
def train_dataset(config, tokenizer, *, per_device_batch_size, local_device_count,
                  process_index=0, process_count=1, num_epochs=None):
    """This host's training batches; infinite when num_epochs is None, fresh masks per epoch.

    With a train_mixture (infinite: each source repeats on its own), every
    batch also holds each example's `source` and `epoch` (mixture.TAGS).
    """
    vocab = tokenize.vocabulary(tokenizer)
    host = dict(process_index=process_index, process_count=process_count)
    host_batch = per_device_batch_size * local_device_count
    if config.train_mixture:
        examples, whole_words = _mixed_examples(config, tokenizer, vocab, host, num_epochs)
        tags = mixture.TAGS
    else:
        split = sources.split_source(config, "train")
        examples = _examples(config, tokenizer, vocab, split, host, shuffle=True,
                             num_epochs=num_epochs, keep_remainder=False)
        whole_words, tags = masking.by_whole_words(config, split.ref_file), ()
    ds = examples.rebatch(host_batch, drop_remainder=True)
    ds = masking.mask(ds, vocab, config, whole_words=whole_words, process_index=process_index,
                      passed_on=tags)
    ds = _static_shapes(ds, config, host_batch)
    return _prefetched(ds)


def _examples(config, tokenizer, vocab, split, host, *, shuffle, num_epochs, keep_remainder):
    """One source's fixed-length examples {"input_ids", "word_starts"}, in batches of varying size.

    split: the sources.Split read; host: {"process_index", "process_count"}.
    """
    ds = sources.read_lines(config, split, shuffle=shuffle, num_epochs=num_epochs, **host)
    ds = tokenize.tokenize(ds, tokenizer, vocab, ref_source=split.ref_source,
                           segmentation=config.chinese_word_segmentation)
    return pack.pack(ds, vocab, config, keep_remainder=keep_remainder)


def _mixed_examples(config, tokenizer, vocab, host, num_epochs):
    """(the train_mixture's examples, tagged with mixture.TAGS; whether they mask whole words)."""
    if num_epochs is not None:
        raise ValueError("a train_mixture has no epochs of its own: each source repeats "
                         "on its own; set max_steps")
    base, parts = mixture.training_sources(config)
    examples, _ = mixture.train_examples(
        base, parts, lambda source_config: _training_epoch(source_config, tokenizer, vocab, host),
        temperature=config.mixture_temperature, sizes_from=config.mixture_sizes_from,
        process_index=host["process_index"])
    return examples, mixture.whole_words(config, parts)


def _training_epoch(source_config, tokenizer, vocab, host):
    """One epoch of a mixture source's training examples (what `mixture` mixes)."""
    return _examples(source_config, tokenizer, vocab, sources.split_source(source_config, "train"),
                     host, shuffle=True, num_epochs=1, keep_remainder=False)


@tf.autograph.experimental.do_not_convert
def eval_dataset(config, tokenizer, *, per_device_batch_size, local_device_count,
                 process_index=0, process_count=1, num_batches=None):
    """This host's validation batches: every example once, fixed masks, weight-0 padding.

    With num_batches (the maximum of count_eval_batches over hosts), exactly
    that many batches, the extra ones all weight 0.
    """
    vocab = tokenize.vocabulary(tokenizer)
    host = dict(process_index=process_index, process_count=process_count)
    host_batch = per_device_batch_size * local_device_count
    split = sources.split_source(config, "validation")
    ds = _eval_batches(config, tokenizer, vocab, split, host_batch, host)
    ds = masking.mask(ds, vocab, config, whole_words=masking.by_whole_words(
        config, split.ref_file), process_index=process_index)
    ds = _padded(ds, host_batch, _widths(config), vocab.pad_id, num_batches)
    ds = _static_shapes(ds, config, host_batch)
    return _prefetched(ds)


@tf.autograph.experimental.do_not_convert
def count_eval_batches(config, tokenizer, *, per_device_batch_size, local_device_count,
                       process_index=0, process_count=1):
    """How many batches eval_dataset yields on this host (one pass over its validation data)."""
    vocab = tokenize.vocabulary(tokenizer)
    host = dict(process_index=process_index, process_count=process_count)
    host_batch = per_device_batch_size * local_device_count
    ds = _eval_batches(config, tokenizer, vocab, sources.split_source(config, "validation"),
                       host_batch, host)
    ds = python_calls.checkpointable(ds.map(lambda batch: 0))
    return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def _eval_batches(config, tokenizer, vocab, split, host_batch, host):
    """Unmasked validation batches of host_batch examples, the last one possibly short."""
    examples = _examples(config, tokenizer, vocab, split, host, shuffle=False, num_epochs=1,
                         keep_remainder=True)
    ds = examples.rebatch(host_batch, drop_remainder=False)
    return _capped(ds, config.max_eval_samples, host_batch, **host)


def _capped(ds, max_eval_samples, host_batch, *, process_index, process_count):
    """ds cut to this host's share of max_eval_samples examples (all of ds when None)."""
    if max_eval_samples is None:
        return ds
    cap = _host_cap(max_eval_samples, process_index, process_count)
    batches = -(-cap // host_batch)

    def truncate(index, batch):
        keep = tf.cast(cap - index * host_batch, tf.int32)
        return {key: value[:keep] for key, value in batch.items()}

    return ds.take(batches).enumerate().map(truncate)


def _host_cap(max_eval_samples, process_index, process_count):
    """This host's share of max_eval_samples (shares differ by at most one)."""
    share, extra = divmod(max_eval_samples, process_count)
    return share + (process_index < extra)


def _padded(ds, host_batch, widths, pad_id, num_batches=None):
    """Masked batches padded with weight-0 examples to host_batch rows.

    With num_batches, exactly that many batches, the extra ones all weight 0.
    """

    def pad(batch):
        missing = host_batch - tf.shape(batch["input_ids"])[0]
        fill = {"input_ids": pad_id, "labels": masking.IGNORE_INDEX}
        padded = {}
        for key in _FEATURES:
            value = batch[key]
            padded[key] = tf.pad(value, [[0, missing], [0, 0]],
                                 constant_values=tf.cast(fill.get(key, 0), value.dtype))
        return padded

    ds = ds.map(pad)
    if num_batches is None:
        return ds
    blank = {key: tf.zeros([0, widths[key]], tf.float32 if key == "masked_weights" else tf.int32)
             for key in _FEATURES}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).map(pad).repeat())
    return ds.take(num_batches)


def _static_shapes(ds, config, host_batch):
    """Every batch of static shape [host_batch, width] (mixture tags: [host_batch])."""
    widths = _widths(config)

    def static_shapes(batch):
        shaped = {key: tf.ensure_shape(batch[key], [host_batch, widths[key]])
                  for key in _FEATURES}
        shaped.update({key: tf.ensure_shape(batch[key], [host_batch])
                       for key in mixture.TAGS if key in batch})
        return shaped

    return ds.map(static_shapes, num_parallel_calls=tf.data.AUTOTUNE)


def _widths(config):
    return {key: config.max_predictions_per_seq if key.startswith("masked") else
            config.max_seq_length for key in _FEATURES}


def _prefetched(ds):
    """ds prefetched, deterministic, its iterator state checkpointable."""
    options = tf.data.Options()
    options.deterministic = True
    return python_calls.checkpointable(ds.prefetch(tf.data.AUTOTUNE)).with_options(options)
