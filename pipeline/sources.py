"""Where lines come from: files, TFDS or Hugging Face datasets, as batches of text.

`line_batches` is the pipeline's first stage. It yields {"text": [n]}
(plus "chinese_ref" and "ref_lines" when the split has a reference file) with blank lines
removed, epoch after epoch, sharded per host and optionally shuffled.
"""

import collections
import difflib
import itertools
import os
import threading

import numpy as np
import tensorflow as tf

from pipeline import blocks, formats, refs, sharding
from pipeline.errors import InputError

_MAX_INTERLEAVE = 4  # files read at once; also mixes their batches
_MAX_INDEX_SHUFFLE = 1 << 16  # batch starts shuffled at once in a saved dataset


def line_batches(config, split, *, process_index=0, process_count=1, shuffle=False,
                 read_batch_size=1024, num_epochs=1):
    """{"text": [n]} batches (1 <= n <= read_batch_size) of `split` for this host.

    num_epochs epochs of them, or endless when None. With shuffle, each
    epoch in a fresh order (uncompressed files: blocks; see `blocks`), then
    through a bounded buffer of config.shuffle_buffer_size lines.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', not {split!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in range({process_count})")
    if read_batch_size < 1:
        raise ValueError(f"read_batch_size must be positive, not {read_batch_size}")
    read = dict(process_index=process_index, process_count=process_count, shuffle=shuffle,
                seed=config.seed, batch_size=read_batch_size)

    def ordered(ds, holdout, epoch):
        ds = ds.map(
            lambda b: sharding.keep_lines(b, holdout, config.validation_split_percentage),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).filter(sharding.not_empty)
        if shuffle:
            ds = sharding.shuffle_lines(ds, config.shuffle_buffer_size, read_batch_size,
                                        config.seed, epoch)
        return ds

    if config.dataset_name:
        ds, holdout = _dataset_batches(config, split, **read)
        # Their own shuffles (and the line buffer's) reshuffle at each repetition.
        ds = ordered(ds, holdout, 0).repeat(num_epochs)
    elif config.train_file or (split == "validation" and config.validation_file):
        one_epoch, holdout = _file_epochs(config, split, **read)
        ds = sharding.repeat_epochs(lambda epoch: ordered(one_epoch(epoch), holdout, epoch),
                                    num_epochs)
    else:
        raise InputError("no data: set train_file (and validation_file) or dataset_name")
    return checkpointable(ds)


def checkpointable(ds):
    """ds with its iterator state checkpointable despite the pipeline's Python calls.

    Parsing and tokenizing run in `numpy_function`s, which tf.data counts as
    external state; they are pure, so the state can ignore them.
    """
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return ds.with_options(options)


def split_source(config, split):
    """(text source, reference file or None) that `split` reads.

    dataset_name wins over the files, as in run_mlm_flax.py; without a
    validation_file, validation is held out of the training files and their refs.
    """
    if config.dataset_name:
        ref = config.validation_ref_file if split == "validation" else config.train_ref_file
        return config.dataset_name, ref
    if split == "validation" and config.validation_file:
        return config.validation_file, config.validation_ref_file
    return config.train_file, config.train_ref_file


def _file_epochs(config, split, **read):
    """(epoch -> that epoch's batches of train_file/validation_file, held-out side or None)."""
    spec, ref = split_source(config, split)
    holdout = None if config.validation_file else split
    files = formats.resolve_files(spec)
    fmt = formats.common_format(files)
    if ref:
        if len(files) != 1 or fmt != "txt":
            raise InputError(
                f"reference file {ref} needs exactly one .txt text file, got {files}")
        if formats.compression_of(files[0]) or formats.compression_of(ref):
            return refs.sequential_epochs(files[0], ref, config.invalid_utf8, **read), holdout
        table = blocks.block_table(files, config.read_block_bytes, read["process_count"])
        return _block_epochs(table, refs.block_reader(files[0], ref, table, config.invalid_utf8),
                             config, **read), holdout
    formats.check_file(files[0], fmt, config.text_column)
    parse = formats.parse_fn(fmt, config.text_column, config.invalid_utf8)
    if fmt in ("txt", "json") and not any(map(formats.compression_of, files)):
        table = blocks.block_table(files, config.read_block_bytes, read["process_count"])
        return _block_epochs(table, lambda block: parse(blocks.block_lines(table, block)),
                             config, **read), holdout
    return _sequential_epochs(files, fmt, parse, config.text_column, **read), holdout


def _block_epochs(table, read, config, **how):
    """epoch -> batches of uncompressed files, read as blocks in that epoch's order.

    read: block id -> its parsed lines.
    """
    return lambda epoch: blocks.epoch_batches(table, epoch, read,
                                              blocks_mixed=config.blocks_mixed, **how)


def _sequential_epochs(files, fmt, parse, column, *, process_index, process_count, shuffle,
                       seed, batch_size):
    """Compressed files, CSV, TFRecord: read front to back, a few interleaved.

    This host's files, in a fresh order each epoch when shuffling (the same
    order on every host, so that hosts sharing files can split their batches).
    """
    files, shard_elements = sharding.host_files(files, process_index, process_count)
    columns = [0] * len(files)
    if fmt == "csv":
        columns = [formats.csv_column_index(f, column) for f in files]
    table = tf.constant(files), tf.constant(list(map(formats.compression_of, files))), \
        tf.constant(columns, tf.int32)

    def read(index):
        path, compression, col = (tf.gather(t, index) for t in table)
        return formats.read_file(path, fmt, compression, batch_size, col)

    def one_epoch(epoch):
        order = tf.data.Dataset.range(len(files))
        if shuffle:
            order = sharding.permuted(order, len(files), seed, epoch)
        cycle = min(len(files), _MAX_INTERLEAVE)
        ds = order.interleave(read, cycle_length=cycle, num_parallel_calls=cycle,
                              deterministic=True)
        if shard_elements:
            ds = sharding.shard_batches(ds, process_index, process_count)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return one_epoch


def _dataset_batches(config, split, **read):
    """Batches of a TFDS ("tfds:NAME[/CONFIG]") or Hugging Face dataset, and the held-out side."""
    _, ref = split_source(config, split)
    if ref:
        raise InputError(f"reference file {ref} applies to a single .txt file, not to "
                         f"dataset {config.dataset_name}")
    if config.dataset_name.startswith("tfds:"):
        return _tfds_batches(config, split, **read)
    import datasets  # imported here: seconds of start-up that file sources do not need

    data = _load_hf(config)
    name, holdout = _pick_split(list(data), split, config.dataset_name)
    data = data[name]
    if isinstance(data, datasets.Dataset):
        return _arrow_batches(data, config.text_column, config.dataset_name, **read), holdout
    return _stream_batches(data, config.text_column, config.dataset_name, **read), holdout


def _pick_split(available, split, dataset):
    """The dataset split to read, and which held-out side to keep when it has no validation."""
    if "train" not in available:
        raise InputError(f"dataset {dataset} has no 'train' split (it has {available})")
    if "validation" in available:
        return split, None
    return "train", split


def _tfds_batches(config, split, *, process_index, process_count, shuffle, seed, batch_size):
    """A prepared TFDS dataset; hosts read even sub-splits, so any file count shards exactly."""
    import tensorflow_datasets as tfds  # imported here, like datasets

    name = config.dataset_name[len("tfds:"):]
    if config.dataset_config_name and "/" not in name:
        name = f"{name}/{config.dataset_config_name}"
    data_dir = os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:  # its text lists the whole catalogue
        raise InputError(_tfds_not_found(name, data_dir, tfds.list_builders())) from e
    except ValueError as e:  # an unknown config, say
        raise InputError(f"TFDS dataset {name!r} not found: "
                         f"{str(e).strip().splitlines()[0]}") from e
    if not builder.is_prepared():
        raise InputError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
                         "build it first (this trainer never downloads)")
    if config.text_column not in builder.info.features:
        raise InputError(f"TFDS dataset {name!r} has no feature {config.text_column!r} "
                         f"(features: {sorted(builder.info.features)})")
    tfds_split, holdout = _pick_split(list(builder.info.splits), split, name)
    read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True)
    ds = builder.as_dataset(
        split=tfds.even_splits(tfds_split, n=process_count)[process_index],
        shuffle_files=shuffle, read_config=read_config)
    column = config.text_column
    return ds.batch(batch_size).map(lambda ex: {"text": ex[column]}), holdout


def _tfds_not_found(name, data_dir, registered):
    """One line: where the dataset was looked for, and the nearest names prepared or known."""
    prepared = tf.io.gfile.listdir(data_dir) if tf.io.gfile.isdir(data_dir) else []
    prepared = [entry.rstrip("/") for entry in prepared]
    known = dict.fromkeys(prepared + list(registered))  # ordered, without duplicates
    nearest = difflib.get_close_matches(name.split("/")[0], known, n=3, cutoff=0.6)
    hint = (f"nearest names: {', '.join(nearest)}" if nearest else
            "no similar name there or in the TFDS catalogue")
    return f"TFDS dataset {name!r} not found in TFDS_DATA_DIR ({data_dir}); {hint}"


def _load_hf(config):
    """A dict of splits: map-style for save_to_disk directories, streaming otherwise."""
    import datasets

    name = config.dataset_name
    saved = any(tf.io.gfile.exists(os.path.join(name, marker))
                for marker in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, config.dataset_config_name, streaming=True)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise InputError(f"Hugging Face dataset {name!r} could not be loaded: {e}") from e
    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return {"train": data}
    return data


def _check_column(data, column, dataset):
    if data.column_names is not None and column not in data.column_names:
        raise InputError(f"dataset {dataset} has no text column {column!r} "
                         f"(columns: {data.column_names})")


def _texts(rows, column, dataset):
    if column not in rows:
        raise InputError(f"dataset {dataset} has no text column {column!r} "
                         f"(columns: {sorted(rows)})")
    return np.array(["" if t is None else t for t in rows[column]], dtype=object)


def _arrow_batches(data, column, dataset, *, process_index, process_count, shuffle, seed,
                   batch_size):
    """A saved (memory-mapped) dataset read by batch index: pure, so checkpointable."""
    _check_column(data, column, dataset)
    starts = tf.data.Dataset.range(0, len(data), batch_size)
    starts = sharding.shard_batches(starts, process_index, process_count)
    if shuffle:
        starts = starts.shuffle(_MAX_INDEX_SHUFFLE, seed=seed, reshuffle_each_iteration=True)

    def fetch(start):
        return _texts(data[int(start):int(start) + batch_size], column, dataset)

    def read(start):
        text = tf.numpy_function(fetch, [start], tf.string, stateful=False)
        text.set_shape([None])
        return {"text": text}

    return starts.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _stream_batches(data, column, dataset, *, process_index, process_count, shuffle, seed,
                    batch_size):
    """A streaming dataset (hub name or folder of data files), resumable at the exact batch.

    The stream's position lives in tf.data's own (checkpointable) state: each
    epoch draws a shuffle key from a seeded tf.data random stream, and each
    element is "batch i of the epoch with key k", fetched by `_StreamReader`.
    A restored iterator asks for the batch it stopped at; in a new process
    the reader gets there by reading the epoch's first i batches again (a
    stream cannot seek), so a resume costs one read of the epoch so far.
    """
    _check_column(data, column, dataset)
    reader = _StreamReader(data, column, dataset, process_index=process_index,
                           process_count=process_count, shuffle=shuffle,
                           batch_size=batch_size)

    def epoch(key):
        def fetch(index):
            # Stateful: tf.data must call it in order, one batch at a time, never in parallel.
            text = tf.numpy_function(reader.batch, [key, index], tf.string, stateful=True)
            text.set_shape([None])
            return {"text": text}

        batches = tf.data.Dataset.range(tf.int64.max).map(fetch)
        return batches.take_while(lambda b: tf.size(b["text"]) > 0)

    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return keys.flat_map(epoch)


class _StreamReader:
    """Batch `index` of the epoch with shuffle key `key` of a streaming dataset, as text.

    Reads go on from where the previous call of the same epoch left off; any
    other batch (the first call after a restore) reopens the epoch and reads
    its first `index` batches again. An epoch's order depends on its key
    only, so the batch is the same either way.
    """

    _MAX_OPEN = 4  # epochs read at once (a counting pass and training, say)

    def __init__(self, data, column, dataset, *, process_index, process_count, shuffle,
                 batch_size):
        self.data, self.column, self.dataset = data, column, dataset
        self.process_index, self.process_count = process_index, process_count
        self.shuffle, self.batch_size = shuffle, batch_size
        self._open = collections.OrderedDict()  # (key, next index) -> iterator of rows
        self._lock = threading.Lock()

    def batch(self, key, index):
        key, index = int(key), int(index)
        with self._lock:
            rows = self._open.pop((key, index), None)
        if rows is None:
            rows = self._epoch(key)
            for _ in itertools.islice(rows, index):
                pass
        batch = next(rows, None)
        if batch is None:
            return np.array([], dtype=object)
        with self._lock:
            self._open[(key, index + 1)] = rows
            while len(self._open) > self._MAX_OPEN:
                self._open.popitem(last=False)
        return _texts(batch, self.column, self.dataset)

    def _epoch(self, key):
        from datasets.distributed import split_dataset_by_node

        data = self.data
        if self.shuffle:
            data = data.shuffle(seed=key % 2**32, buffer_size=self.batch_size)
        data = split_dataset_by_node(data, self.process_index, self.process_count)
        return iter(data.iter(batch_size=self.batch_size))
