"""Several sources' examples mixed into one stream: seeded, stateless, checkpointable.

    per source: inputs._training_epoch -> repeat, counting epochs -> unbatch
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

The trainer fixes the weights once per run (`with_resolved_weights`: sizes
are read once, the run records the weights) and evaluates each validation
source on its own (`validation_sets`).

Speed: choosing per example costs about 2.6 µs of CPU per example here (an
unbatch, the choice and the batch), 3% of one core at 12k examples/s; see
bench/pipeline.py --mixture_sources.
"""

import collections
import contextlib
import dataclasses
import json

import numpy as np
import tensorflow as tf

from pipeline import masking, mixture_sizes, mixture_spec
from pipeline import sources as sources_lib
from pipeline.errors import InputError

_DRAW_BLOCK = 1024  # sources drawn at once; part of the definition of the mixed stream
_MIX_SALT = 0x6D697821  # keeps the draws' seeds apart from the masks' (seed, host, batch)
_OUT_BATCH = 256  # examples per element of the mixed stream (the caller rebatches)
TAGS = ("source", "epoch")  # what the mixed stream adds to each example; not model inputs

# One validation set: a source's name (None for a run without mixtures), its data, and its
# weight in the total.
ValidationSet = collections.namedtuple("ValidationSet", "name config weight")


def _uses_whole_words(config):
    """Whether `config`'s training data is masked by whole words."""
    return masking.by_whole_words(config, config.train_ref_file)


def whole_words(config, sources):
    """Whether the mixture's masker takes whole words: when any source's training split does."""
    return any(_uses_whole_words(mixture_spec.source_config(config, s)) for s in sources)


def train_examples(config, sources, one_epoch, *, temperature=None, sizes_from="bytes",
                   process_index=0):
    """(this host's mixed training examples, the sources' weights).

    `one_epoch(source_config)` gives one epoch of a source's fixed-length
    examples {"input_ids", "word_starts"} for this host (`inputs._training_epoch`).
    The mixed examples add "source" and "epoch", in batches of varying size,
    as one source's examples come. When the mixture masks whole words, a
    source that does not has each token as a word of its own, so one
    whole-word masker serves all: it then picks single tokens uniformly, as
    token masking does. Sizes are read, after the sources are built (which
    checks that their data exists), only for unweighted sources.
    """
    configs = [mixture_spec.source_config(config, source) for source in sources]
    by_words = whole_words(config, sources)
    streams = []
    for source, source_config in zip(sources, configs):
        with naming(source):
            stream = one_epoch(source_config)
        streams.append(stream.map(_tokens_as_words)
                       if by_words and not _uses_whole_words(source_config) else stream)
    weights = source_weights(configs, sources, temperature, sizes_from)
    names = [f"{source.name} ({source.data})" for source in sources]  # unquoted: see below
    return mix(streams, weights, names, seed=config.seed, process_index=process_index), weights


@contextlib.contextmanager
def naming(source):
    """Prefixes an InputError raised while building `source`'s data with the source's name."""
    try:
        yield
    except InputError as error:
        raise InputError(f"train_mixture: source {source.name}: {error}") from error


def source_weights(configs, sources, temperature=None, sizes_from="bytes"):
    """Each source's probability; sizes are read only for the sources without a weight."""
    sizes = []
    for source, source_config in zip(sources, configs):
        with naming(source):
            sizes.append(None if source.weight is not None
                         else mixture_sizes.source_size(source_config, sizes_from))
    return mixture_spec.weights(sources, sizes, temperature)


def training_sources(config):
    """(the run config each training source's config derives from, the sources as given).

    With a validation_mixture nothing is held out of the training sources (as
    with a validation_file for one source), unless a source names its own
    validation_file, which then replaces the held-out part anyway.
    """
    sources = mixture_spec.parse_mixture(config.train_mixture,
                                         temperature=config.mixture_temperature)
    if config.validation_mixture:
        config = dataclasses.replace(config, validation_split_percentage=0)
    return config, sources


def with_resolved_weights(config):
    """(config whose train_mixture has every weight fixed, {name: weight}), sizes read once.

    Weights by size read each unweighted source's size (a counting pass with
    mixture_sizes_from lines) here, once per run: every later build of the
    training data, the evaluation's total and the run's recorded arguments
    then use the same numbers. Each unweighted source's data is opened first,
    so a missing file or text column fails with the pipeline's own message.
    """
    base, sources = training_sources(config)
    configs = [mixture_spec.source_config(base, source) for source in sources]
    for source, source_config in zip(sources, configs):
        if source.weight is None:
            with naming(source):
                sources_lib.line_batches(source_config, "train")
    weights = source_weights(configs, sources, config.mixture_temperature,
                             config.mixture_sizes_from)
    resolved = [dataclasses.replace(s, weight=w) for s, w in zip(sources, weights)]
    spec = json.dumps([{k: v for k, v in dataclasses.asdict(s).items() if v is not None}
                       for s in resolved])
    return (dataclasses.replace(config, train_mixture=spec, mixture_temperature=None),
            {s.name: s.weight for s in resolved})


def validation_sets(config, train_weights=None):
    """The run's validation sets: one per source of a mixture, or the one of a single source.

    `train_weights` ({name: weight}, from with_resolved_weights) weighs the
    sources in the total. With a validation_mixture, each of its sources reads
    its SPEC as validation data (a dataset: its validation split, or the part
    held out of its train split); its weight is its own, else the training
    source's of the same name, else all weigh the same. Without one, each
    training source is evaluated on its own validation_file or on the lines
    held out of it (validation_split_percentage).
    """
    if config.validation_mixture:
        sources = mixture_spec.parse_validation_mixture(config.validation_mixture)
        weights = _validation_weights(sources, train_weights)
        return [ValidationSet(s.name, _validation_config(config, s), w)
                for s, w in zip(sources, weights)]
    if config.train_mixture:
        base, sources = training_sources(config)
        return [ValidationSet(s.name, mixture_spec.source_config(base, s), train_weights[s.name])
                for s in sources]
    return [ValidationSet(None, config, 1.0)]


def _validation_config(config, source):
    """The DataConfig whose validation split is `source`'s data."""
    read = mixture_spec.source_config(config, source)
    if not source.train_file:
        return read
    return dataclasses.replace(read, train_file=None, train_ref_file=None,
                               validation_file=source.train_file,
                               validation_ref_file=source.train_ref_file)


def _validation_weights(sources, train_weights):
    if not mixture_spec.needs_sizes(sources):
        return mixture_spec.weights(sources, flag="validation_mixture")
    if not train_weights:
        return [1 / len(sources)] * len(sources)
    missing = [s.name for s in sources if s.name not in train_weights]
    if missing:
        raise InputError(
            f"validation_mixture: source {missing[0]!r}: weight: missing, and the "
            "train_mixture has no source of that name to take it from; weight every "
            "validation source, or name them as the training sources")
    total = sum(train_weights[s.name] for s in sources)
    return [train_weights[s.name] / total for s in sources]


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
