"""TFDS and Hugging Face datasets, read as batches of text for this host.

A dataset does the first stages (read, host split, its own shuffle) itself:
TFDS by even sub-splits, a saved Hugging Face dataset by batch index, a
streamed one by `split_dataset_by_node`. Each yields {"text": [n]}; the
held-out split and the line shuffle follow in `sources.read_lines`.
"""

import collections
import difflib
import itertools
import os
import threading

import numpy as np
import tensorflow as tf

from pipeline import hosts
from pipeline.errors import InputError

_MAX_INDEX_SHUFFLE = 1 << 16  # batch starts shuffled at once in a saved dataset


def batches(config, split, **read):
    """Batches of a TFDS ("tfds:NAME[/CONFIG]") or Hugging Face dataset, and the held-out side.

    split: "train" or "validation".
    """
    if config.dataset_name.startswith("tfds:"):
        return _tfds_batches(config, split, **read)
    import datasets  # imported here: seconds of start-up that file sources do not need

    data = load_hf(config)
    name, holdout = _pick_split(list(data), split, config.dataset_name)
    data = data[name]
    if isinstance(data, datasets.Dataset):
        return _arrow_batches(data, config.text_column, config.dataset_name, **read), holdout
    return _stream_batches(data, config.text_column, config.dataset_name, **read), holdout


def tfds_location(config):
    """(TFDS name with its config, data directory) of config.dataset_name "tfds:NAME[/CONFIG]"."""
    import tensorflow_datasets as tfds  # imported here, like datasets

    name = config.dataset_name[len("tfds:"):]
    if config.dataset_config_name and "/" not in name:
        name = f"{name}/{config.dataset_config_name}"
    return name, os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR


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

    name, data_dir = tfds_location(config)
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


def load_hf(config):
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
    starts = hosts.shard_batches(starts, process_index, process_count)
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
