"""What the trainer calls: per-host training and evaluation batches for masked LM.

The stages, each a Dataset -> Dataset function on whole batches of lines:

    sources.line_batches (epochs) -> tokenize -> pack -> rebatch(host batch)
      -> enumerate -> mask (stateless, seeded by position) -> static shapes
      -> prefetch

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
seconds at each start of a run, is switched off for the datasets built here
(`do_not_convert` on the functions that build them).
"""

import functools
import os

import huggingface_hub
import tensorflow as tf
import transformers

from pipeline import masking, mixture, pack, sources, tokenize
from pipeline.errors import InputError

_FEATURES = ("input_ids", "attention_mask", "token_type_ids", "labels", "masked_positions",
             "masked_ids", "masked_weights")


def load_tokenizer(name_or_path):
    """The model's Hugging Face fast tokenizer (a directory or a hub name)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise InputError(_no_tokenizer(name_or_path, error)) from error
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # What transformers 5 builds from a directory holding only a model's config.json.
        raise InputError(_no_tokenizer(name_or_path, "it loads with special tokens only"))
    if not tokenizer.is_fast:
        raise InputError(f"tokenizer at {str(name_or_path)!r} is not a fast (Rust) tokenizer")
    return tokenizer


def _no_tokenizer(name_or_path, error):
    """One line that says what was found instead (transformers' own text runs to many lines).

    A path that cannot be a Hub name ('runs/x/tokenizer', './tok') is a
    missing directory; transformers would call it a malformed repository id.
    """
    if os.path.isdir(name_or_path):
        files = sorted(os.listdir(name_or_path))
        shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
        reason = f"the directory holds {shown or 'nothing'}"
    elif not _could_be_hub_name(str(name_or_path)):
        reason = "the directory does not exist"
    elif "couldn't connect" in str(error).lower():
        reason = ("there is no such directory, and the Hugging Face Hub cannot be reached "
                  "(no network)")
    else:
        reason = str(error).strip().splitlines()[0]
    return (f"no tokenizer at {str(name_or_path)!r}: expected a directory with tokenizer.json "
            f"(or a hub name); {reason}")


def _could_be_hub_name(name):
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except huggingface_hub.utils.HFValidationError:
        return False
    return True


def _examples(config, tokenizer, vocab, split, *, process_index, process_count, shuffle,
              num_epochs, keep_remainder):
    """Fixed-length examples {"input_ids", "word_starts"} in batches of varying size."""
    lines = sources.line_batches(config, split, process_index=process_index,
                                 process_count=process_count, shuffle=shuffle,
                                 num_epochs=num_epochs)
    text_file, ref_file = sources.split_source(config, split)
    tokenized = tokenize.tokenize(
        lines, tokenizer, vocab, ref_source=tokenize.RefSource(text_file, ref_file),
        segmentation=config.chinese_word_segmentation)
    return pack.pack(tokenized, vocab, config, keep_remainder=keep_remainder)


def _masker(config, vocab, split, process_index):
    _, ref_file = sources.split_source(config, split)
    whole_words = bool(config.whole_word_masking or ref_file or config.chinese_word_segmentation)
    return masking.masker(vocab, config, whole_words=whole_words, process_index=process_index)


def _widths(config):
    return {key: config.max_predictions_per_seq if key.startswith("masked") else
            config.max_seq_length for key in _FEATURES}


def _finish(ds, config, host_batch):
    """Host batches of static shape [host_batch, width] (mixture tags: [host_batch]), prefetched."""
    widths = _widths(config)

    def static_shapes(batch):
        shaped = {key: tf.ensure_shape(batch[key], [host_batch, widths[key]])
                  for key in _FEATURES}
        shaped.update({key: tf.ensure_shape(batch[key], [host_batch])
                       for key in mixture.TAGS if key in batch})
        return shaped

    options = tf.data.Options()
    options.deterministic = True
    ds = ds.map(static_shapes, num_parallel_calls=tf.data.AUTOTUNE)
    return sources.checkpointable(ds.prefetch(tf.data.AUTOTUNE)).with_options(options)


@tf.autograph.experimental.do_not_convert
def train_dataset(config, tokenizer, *, per_device_batch_size, local_device_count,
                  process_index=0, process_count=1, num_epochs=None):
    """This host's training batches; infinite when num_epochs is None, fresh masks per epoch.

    With a train_mixture (infinite: each source repeats on its own), every
    batch also holds each example's `source` and `epoch` (mixture.TAGS).
    """
    vocab = tokenize.vocabulary(tokenizer)
    read = dict(tokenizer=tokenizer, vocab=vocab, split="train", process_index=process_index,
                process_count=process_count, shuffle=True, keep_remainder=False)
    if config.train_mixture:
        if num_epochs is not None:
            raise ValueError("a train_mixture has no epochs of its own: each source repeats "
                             "on its own; set max_steps")
        base, parts = mixture.training_sources(config)
        examples, _ = mixture.train_examples(
            base, parts, functools.partial(_examples, num_epochs=1, **read),
            temperature=config.mixture_temperature, sizes_from=config.mixture_sizes_from,
            process_index=process_index)
        mask = _keeping_tags(masking.masker(vocab, config, process_index=process_index,
                                            whole_words=mixture.whole_words(config, parts)))
    else:
        examples = _examples(config, num_epochs=num_epochs, **read)
        mask = _masker(config, vocab, "train", process_index)
    host_batch = per_device_batch_size * local_device_count
    ds = examples.rebatch(host_batch, drop_remainder=True).enumerate()
    ds = ds.map(mask, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, config, host_batch)


def _keeping_tags(mask):
    """mask(index, batch) that also passes on the batch's mixture tags."""

    def masked(index, batch):
        return {**mask(index, batch), **{key: batch[key] for key in mixture.TAGS}}

    return masked


def _host_cap(max_eval_samples, process_index, process_count):
    """This host's share of max_eval_samples (shares differ by at most one)."""
    share, extra = divmod(max_eval_samples, process_count)
    return share + (process_index < extra)


def _eval_batches(config, tokenizer, vocab, host_batch, process_index, process_count):
    """Unmasked validation batches of host_batch examples, the last one possibly short."""
    examples = _examples(config, tokenizer, vocab, "validation", process_index=process_index,
                         process_count=process_count, shuffle=False, num_epochs=1,
                         keep_remainder=True)
    ds = examples.rebatch(host_batch, drop_remainder=False)
    if config.max_eval_samples is None:
        return ds
    cap = _host_cap(config.max_eval_samples, process_index, process_count)
    batches = -(-cap // host_batch)

    def truncate(index, batch):
        keep = tf.cast(cap - index * host_batch, tf.int32)
        return {key: value[:keep] for key, value in batch.items()}

    return ds.take(batches).enumerate().map(truncate)


def _pad_batch(host_batch, widths, pad_id):
    """Pads a masked batch with weight-0 examples up to host_batch rows."""

    def pad(batch):
        missing = host_batch - tf.shape(batch["input_ids"])[0]
        fill = {"input_ids": pad_id, "labels": masking.IGNORE_INDEX}
        padded = {}
        for key in _FEATURES:
            value = batch[key]
            padded[key] = tf.pad(value, [[0, missing], [0, 0]],
                                 constant_values=tf.cast(fill.get(key, 0), value.dtype))
        return padded

    def blank():
        return {key: tf.zeros([0, widths[key]],
                              tf.float32 if key == "masked_weights" else tf.int32)
                for key in _FEATURES}

    return pad, blank


@tf.autograph.experimental.do_not_convert
def eval_dataset(config, tokenizer, *, per_device_batch_size, local_device_count,
                 process_index=0, process_count=1, num_batches=None):
    """This host's validation batches: every example once, fixed masks, weight-0 padding.

    With num_batches (the maximum of count_eval_batches over hosts), exactly
    that many batches, the extra ones all weight 0.
    """
    vocab = tokenize.vocabulary(tokenizer)
    host_batch = per_device_batch_size * local_device_count
    ds = _eval_batches(config, tokenizer, vocab, host_batch, process_index, process_count)
    ds = ds.enumerate().map(_masker(config, vocab, "validation", process_index))
    pad, blank = _pad_batch(host_batch, _widths(config), vocab.pad_id)
    ds = ds.map(pad)
    if num_batches is not None:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank()).map(pad).repeat())
        ds = ds.take(num_batches)
    return _finish(ds, config, host_batch)


@tf.autograph.experimental.do_not_convert
def count_eval_batches(config, tokenizer, *, per_device_batch_size, local_device_count,
                       process_index=0, process_count=1):
    """How many batches eval_dataset yields on this host (one pass over its validation data)."""
    vocab = tokenize.vocabulary(tokenizer)
    host_batch = per_device_batch_size * local_device_count
    ds = _eval_batches(config, tokenizer, vocab, host_batch, process_index, process_count)
    ds = sources.checkpointable(ds.map(lambda batch: 0))
    return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
