"""Where lines come from: the pipeline's first stages, from a split's data to batches of text.

`split_source` decides once what a split reads (files or a dataset, and its
Chinese reference file); `read_lines` then runs, epoch after epoch, the
stages read -> host split -> parse (the reader's: `blocks` or
`_sequential_epochs` with `formats`, `refs` for a reference file,
`named_datasets` for a dataset) -> hold out -> shuffle (`lines`). It yields
{"text": [n]} (plus "chinese_ref" and "ref_lines" when the split has a
reference file), blank lines removed. `inputs` lists the stages after these.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from pipeline import blocks, formats, hosts, lines, named_datasets, python_calls, refs
from pipeline.errors import InputError

_MAX_INTERLEAVE = 4  # files read at once; also mixes their batches


@dataclasses.dataclass(frozen=True)
class Split:
    """What one split reads, decided once by `split_source` and passed to the stages that ask."""

    name: str  # "train" or "validation"
    data: Optional[str]  # files (a path, comma-separated list or glob), or a dataset's name
    ref_file: Optional[str]  # Chinese whole-word references of `data` (see refs)
    from_dataset: bool  # data is config.dataset_name

    @property
    def ref_source(self):
        return refs.RefSource(self.data, self.ref_file)


def split_source(config, split):
    """The Split that `split` ("train" or "validation") reads.

    dataset_name wins over the files, as in run_mlm_flax.py; without a
    validation_file, validation is held out of the training files and their refs.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', not {split!r}")
    if config.dataset_name:
        ref = config.validation_ref_file if split == "validation" else config.train_ref_file
        return Split(split, config.dataset_name, ref, from_dataset=True)
    if split == "validation" and config.validation_file:
        return Split(split, config.validation_file, config.validation_ref_file, False)
    return Split(split, config.train_file, config.train_ref_file, False)


def line_batches(config, split, **how):
    """read_lines of the split named `split` ("train" or "validation")."""
    return read_lines(config, split_source(config, split), **how)


def read_lines(config, split, *, process_index=0, process_count=1, shuffle=False,
               read_batch_size=1024, num_epochs=1):
    """{"text": [n]} batches (1 <= n <= read_batch_size) of `split` (a Split) for this host.

    num_epochs epochs of them, or endless when None. With shuffle, each
    epoch in a fresh order (uncompressed files: blocks; see `blocks`), then
    through a bounded buffer of config.shuffle_buffer_size lines.
    """
    _check_settings(process_index, process_count, read_batch_size)
    read_epoch, holdout = _reader(config, split, process_index=process_index,
                                  process_count=process_count, shuffle=shuffle,
                                  seed=config.seed, batch_size=read_batch_size)

    def one_epoch(epoch):
        ds = read_epoch(epoch)  # read, host split, parse
        ds = lines.hold_out(ds, holdout, config.validation_split_percentage)
        if shuffle:
            ds = lines.shuffle_lines(ds, config.shuffle_buffer_size, read_batch_size,
                                     config.seed, epoch)
        return ds

    if split.from_dataset:
        # Their own shuffles (and the line buffer's) reshuffle at each repetition.
        return python_calls.checkpointable(one_epoch(0).repeat(num_epochs))
    return python_calls.checkpointable(lines.repeat_epochs(one_epoch, num_epochs))


def _reader(config, split, **read):
    """(epoch -> this host's parsed batches of that epoch, the held-out side or None)."""
    if split.from_dataset:
        if split.ref_file:
            refs.check_pairing(split.ref_file, dataset=split.data)
        ds, holdout = named_datasets.batches(config, split.name, **read)
        return (lambda epoch: ds), holdout
    if not split.data:
        raise InputError("no data: set train_file (and validation_file) or dataset_name")
    return _file_epochs(config, split, **read)


def _check_settings(process_index, process_count, read_batch_size):
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in range({process_count})")
    if read_batch_size < 1:
        raise ValueError(f"read_batch_size must be positive, not {read_batch_size}")


def _file_epochs(config, split, **read):
    """(epoch -> this host's parsed batches of that epoch, held-out side or None).

    Uncompressed text and JSON lines are read as blocks in the epoch's order
    (`blocks`); compressed files, CSV and TFRecord front to back.
    """
    holdout = None if config.validation_file else split.name
    files = formats.resolve_files(split.data)
    fmt = formats.common_format(files)
    if split.ref_file:
        refs.check_pairing(split.ref_file, files=files, fmt=fmt)
        return refs.epochs(files[0], split.ref_file, config, **read), holdout
    formats.check_file(files[0], fmt, config.text_column)
    parse = formats.parse_fn(fmt, config.text_column, config.invalid_utf8)
    if fmt in ("txt", "json") and not any(map(formats.compression_of, files)):
        table = blocks.block_table(files, config.read_block_bytes, read["process_count"])
        return blocks.epochs(table, lambda block: parse(blocks.block_lines(table, block)),
                             config.blocks_mixed, **read), holdout
    return _sequential_epochs(files, fmt, parse, config.text_column, **read), holdout


def _sequential_epochs(files, fmt, parse, column, *, process_index, process_count, shuffle,
                       seed, batch_size):
    """Compressed files, CSV, TFRecord: read front to back, a few interleaved.

    This host's files, in a fresh order each epoch when shuffling (the same
    order on every host, so that hosts sharing files can split their batches).
    """
    files, shard_elements = hosts.host_files(files, process_index, process_count)
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
            order = hosts.permuted(order, len(files), seed, epoch)
        cycle = min(len(files), _MAX_INTERLEAVE)
        ds = order.interleave(read, cycle_length=cycle, num_parallel_calls=cycle,
                              deterministic=True)
        if shard_elements:
            ds = hosts.shard_batches(ds, process_index, process_count)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return one_epoch
