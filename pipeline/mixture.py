"""Several sources' examples mixed into one stream: seeded, stateless, checkpointable.

    per source: _examples (one epoch) -> repeat, counting epochs -> unbatch
    draws: counter -> source per example (stateless, seeded by block) -> unbatch
    choose_from_datasets(sources, draws) -> batch

Every example of the mixed stream comes from source s with probability w_s,
independently: the draws are stateless uniform numbers seeded by (seed,
process_index, block of _DRAW_BLOCK positions), so the sequence of sources
depends on nothing else (not on the batch size, nor on how fast a source
reads). Each host draws its own sequence, as it draws its own masks: a global
batch is then an independent sample of the mixture rather than the same
per-source counts repeated on every host, and hosts share no data anyway
(each reads its own share of every source).

Each source repeats on its own, with its own epoch counter, re-read each
epoch through its own shuffle as a single source is; its examples carry `source` (its index) and
`epoch` (that source's epoch), int32 [n], for the trainer's per-source counts
and the preview. They are not model inputs: the masking stage passes on only
the model's features.

The iterator state is checkpointable: a draw is a function of its position,
and tf.data saves each source's position (its reader, shuffle buffers,
packing carry and epoch count) and where the mixed stream stands.

Speed: choosing per example costs about 2.6 µs of CPU per example here (an
unbatch, the choice and the batch), 3% of one core at 12k examples/s; see
bench/pipeline.py --mixture_sources.
"""

import numpy as np
import tensorflow as tf

from pipeline import mixture_sizes, mixture_spec

_DRAW_BLOCK = 1024  # sources drawn at once; part of the definition of the mixed stream
_MIX_SALT = 0x6D697821  # keeps the draws' seeds apart from the masks' (seed, host, batch)
_OUT_BATCH = 256  # examples per element of the mixed stream (the caller rebatches)


def uses_whole_words(config):
    """Whether `config`'s training data is masked by whole words (asked, or Chinese words)."""
    return bool(config.whole_word_masking or config.train_ref_file
                or config.chinese_word_segmentation)


def whole_words(config, sources):
    """Whether the mixture's masker takes whole words: when any source's training split does."""
    return any(uses_whole_words(mixture_spec.source_config(config, s)) for s in sources)


def train_examples(config, sources, one_epoch, *, temperature=None, sizes_from="bytes",
                   process_index=0):
    """(this host's mixed training examples, the sources' weights).

    `one_epoch(source_config)` gives one epoch of a source's fixed-length
    examples {"input_ids", "word_starts"} for this host (`inputs._examples`
    with num_epochs=1). The mixed examples add "source" and "epoch", in
    batches of varying size, as one source's examples come. When the mixture
    masks whole words, a source that does not has each token as a word of its
    own, so one whole-word masker serves all: it then picks single tokens
    uniformly, as token masking does. Sizes are read, after the sources are
    built (which checks that their data exists), only for unweighted sources.
    """
    configs = [mixture_spec.source_config(config, source) for source in sources]
    by_words = whole_words(config, sources)
    streams = [one_epoch(c).map(_tokens_as_words) if by_words and not uses_whole_words(c)
               else one_epoch(c) for c in configs]
    sizes = [mixture_sizes.source_size(c, sizes_from) if s.weight is None else None
             for s, c in zip(sources, configs)]
    weights = mixture_spec.weights(sources, sizes, temperature)
    names = [f"{source.name} ({source.data})" for source in sources]  # unquoted: see below
    return mix(streams, weights, names, seed=config.seed, process_index=process_index), weights


def _tokens_as_words(batch):
    return {**batch, "word_starts": tf.ones_like(batch["word_starts"])}


def mix(streams, weights, names, *, seed, process_index=0):
    """Examples of the one-epoch `streams`, each repeated forever, drawn with `weights`.

    `streams` yield dicts of [n, ...] tensors (n varying); `names` name them
    in errors. Returns batches of _OUT_BATCH examples with `source` and
    `epoch` added.
    """
    if not len(streams) == len(weights) == len(names):
        raise ValueError(f"{len(streams)} streams, {len(weights)} weights, {len(names)} names")
    repeated = [_repeat_counting_epochs(stream, index, name).unbatch()
                for index, (stream, name) in enumerate(zip(streams, names))]
    draws = _draws(weights, seed, process_index)
    mixed = tf.data.Dataset.choose_from_datasets(repeated, draws)
    return mixed.batch(_OUT_BATCH)


def _draws(weights, seed, process_index):
    """The source of every position: stateless, seeded by block, in blocks of _DRAW_BLOCK."""
    cumulative = np.cumsum(np.asarray(weights, np.float64))
    cumulative = tf.constant(cumulative / cumulative[-1])
    last = len(weights) - 1
    stream_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, process_index], tf.int64), _MIX_SALT)

    def block(index):
        uniform = tf.random.stateless_uniform(
            [_DRAW_BLOCK], tf.random.experimental.stateless_fold_in(stream_seed, index),
            dtype=tf.float64)
        chosen = tf.searchsorted(cumulative, uniform, side="right", out_type=tf.int64)
        return tf.minimum(chosen, last)  # a rounding of the last cumulative weight below 1

    return tf.data.Dataset.counter().map(block).unbatch()


def _repeat_counting_epochs(one_epoch, index, name):
    """one_epoch repeated forever, each example tagged with `source` and its `epoch`.

    An empty batch marks each epoch's end; an epoch without an example stops
    with an error naming the source (repeating it would never yield). The
    message has no quotes: tf.debugging.Assert would print them escaped.
    """
    spec = one_epoch.element_spec
    end_marker = {key: tf.zeros([0, *s.shape[1:]], s.dtype) for key, s in spec.items()}
    marked = one_epoch.map(lambda batch: (batch, False)).concatenate(
        tf.data.Dataset.from_tensors((end_marker, True))).repeat()
    empty_epoch = (f"InputError: source {name}: no example in an epoch of the share this host "
                   "reads (the data is empty, only blank lines, too short for one example, or "
                   "all held out for validation)")

    def count(state, element):
        epoch, any_seen = state
        batch, end = element
        rows = tf.shape(next(iter(batch.values())))[0]
        check = tf.debugging.Assert(tf.logical_not(end) | any_seen, [empty_epoch])
        with tf.control_dependencies([check]):
            tagged = {**batch, "source": tf.fill([rows], index),
                      "epoch": tf.fill([rows], epoch)}
        state = (tf.where(end, epoch + 1, epoch), tf.logical_not(end) & (any_seen | (rows > 0)))
        return state, tagged

    return marked.scan((tf.constant(0), tf.constant(False)), count)
