"""Uncompressed text files read as blocks of bytes, in a fresh seeded random order every epoch.

Why: a corpus stored in order (a dump sorted by article, books one after
another) read front to back and mixed only by a bounded buffer trains a
worse model than a global shuffle (DESIGN.md "Order is part of
correctness"). Any byte of an uncompressed file is one seek away, so the
files of a host are cut into blocks of `block_bytes`, blocks are read in a
permutation that is a stateless function of (seed, epoch), and the lines of
`blocks_mixed` blocks are permuted together, so every batch draws on many
parts of the corpus. No pass over the data is needed: the table of blocks
comes from the files' sizes.

A line belongs to the block in which it starts, so every line is read once
per epoch wherever the boundaries fall. Reading block [s, e) looks at the
byte before s for the first line start >= s, and reads on past e to the end
of the last line that starts before e; a block inside a long line yields
nothing. The work stays linear in the file's size, and a line longer than
`max_line_bytes` is refused naming the file and the limit. The last block of
a file reads to the end the file has when it is read, so a file appended to
during training is read to its new end.

Reading a block is a pure function of (path, offset, size): one Python call
returns the block's lines as one string, split into lines by TensorFlow, so
there is no per-line Python and the iterator state stays a position in the
stream. The lines are TextLineDataset's: split at "\\n", every "\\r"
dropped, no empty line after a final newline.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import os

import numpy as np
import tensorflow as tf

from pipeline import hosts
from pipeline.config import BLOCK_BYTES, BLOCKS_MIXED  # noqa: F401  (also read as blocks.X)
from pipeline.errors import InputError
from pipeline.python_calls import CALLS

# A line this long is refused: tokenizing one line costs about 100x its size in memory.
MAX_LINE_BYTES = 8 << 20
# Blocks shrink for small corpora so that every host gets a share, and a share several blocks.
MIN_BLOCKS_PER_HOST = 16
_STAT_THREADS = 32  # remote stats take tens of milliseconds each
_PIECE_BYTES = 64 << 10  # read past a block's end in pieces this large, until a line ends
_COUNT_BYTES = 1 << 20  # pieces of a file read when counting its lines for an error message
_GCS_READAHEAD = "GCS_READ_CACHE_BLOCK_SIZE_MB"  # TensorFlow's gs:// readahead, 64 by default


@dataclasses.dataclass(frozen=True)
class BlockTable:
    """Blocks of `block_bytes` over files in order: block b is bytes of file(b) from offset(b)."""

    files: tuple
    sizes: tuple  # bytes of each file when the table was made
    block_bytes: int

    @functools.cached_property
    def first_blocks(self):
        """[len(files) + 1] int64: the id of each file's first block, then the number of blocks."""
        counts = [-(-size // self.block_bytes) for size in self.sizes]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def num_blocks(self):
        return int(self.first_blocks[-1])


def file_size(path):
    return tf.io.gfile.stat(path).length


def block_table(files, block_bytes=BLOCK_BYTES, process_count=1):
    """The table of blocks over `files`, from their sizes (stat'ed in parallel).

    Blocks are at most block_bytes; smaller when the corpus is small, so that
    each of process_count hosts gets about MIN_BLOCKS_PER_HOST of them.
    """
    if any(f.startswith("gs://") for f in files) and _GCS_READAHEAD not in os.environ:
        logging.getLogger(__name__).warning(
            "gs:// text is read in blocks, and TensorFlow fetches up to 64 MB for each block "
            "unless %s is set (in MB; 1 suits blocks of 1 MiB) before it starts",
            _GCS_READAHEAD)
    with concurrent.futures.ThreadPoolExecutor(min(_STAT_THREADS, len(files))) as pool:
        sizes = tuple(pool.map(file_size, files))
    share = sum(sizes) // (process_count * MIN_BLOCKS_PER_HOST)
    return BlockTable(tuple(files), sizes, max(1, min(block_bytes, share)))


def epoch_order(table, epoch, *, seed, shuffle, process_index, process_count):
    """This host's block ids for one epoch: positions p, p + P, ... of the epoch's order.

    The order of all blocks is a permutation seeded by (seed, epoch), the
    same on every host (identity without shuffle), so hosts read disjoint
    blocks whose union is the corpus, each spread over all of it.
    """
    n = table.num_blocks
    positions = tf.data.Dataset.range(process_index, n, process_count)
    return hosts.permuted(positions, n, seed, epoch) if shuffle else positions


def _locate(table, block):
    """(path, offset, size, is_last) of a block id, by the table's cumulative block counts."""
    first_blocks = tf.constant(table.first_blocks)
    file = tf.searchsorted(first_blocks, block[None], side="right")[0] - 1
    index = block - tf.gather(first_blocks, file)
    offset = index * table.block_bytes
    size = tf.minimum(tf.constant(table.block_bytes, tf.int64),
                      tf.gather(tf.constant(table.sizes, tf.int64), file) - offset)
    is_last = tf.equal(block + 1, tf.gather(first_blocks, file + 1))
    return tf.gather(tf.constant(table.files), file), offset, size, is_last


def _open(path):
    """A binary reader: Python's own for a local file (30x cheaper to open), else TensorFlow's."""
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")


def read_block(path, offset, size, to_end, max_line_bytes=MAX_LINE_BYTES):
    """(the bytes of the lines that start in [offset, offset + size), where the first starts).

    With to_end, the block runs to the end of the file as it is now. The
    text ends with the last line's newline (or at the end of the file).
    """
    path, offset, size = os.fsdecode(path), int(offset), int(size)
    with CALLS, _open(path) as f:
        if offset:
            f.seek(offset - 1)  # the byte before the block: a newline there starts a line
        data = f.read() if to_end else f.read(size + (offset > 0))
        if offset:
            first = data.find(b"\n", 0, None if to_end else size)
            if first < 0:
                return b"", np.int64(offset)  # inside one long line
            data, offset = data[first + 1:], offset + first
        if to_end or not data or data.endswith(b"\n"):
            return data, np.int64(offset)
        return _finish_line(f, path, data, offset, max_line_bytes), np.int64(offset)


def _finish_line(f, path, data, offset, max_line_bytes):
    """data plus the rest of its last line, read from f in pieces; refused past max_line_bytes."""
    line_start = data.rfind(b"\n") + 1
    pieces, length = [data], len(data) - line_start
    while piece := f.read(_PIECE_BYTES):
        end = piece.find(b"\n")
        length += len(piece) if end < 0 else end
        if length > max_line_bytes:
            number = line_number(path, 1, offset + line_start)
            raise InputError(
                f"{path}: line {number} is longer than {max_line_bytes} bytes, the limit for "
                "one line; is this a text file with one example per line?")
        if end >= 0:
            pieces.append(piece[:end + 1])
            break
        pieces.append(piece)
    return b"".join(pieces)


def line_number(path, number, start):
    """number plus the count of newlines in `path` before byte `start` (read only when > 0).

    Errors name lines by number, which a block does not know: it is counted
    here, on the error path only.
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    number, start = int(number), int(start)
    if start <= 0:
        return number
    with _open(path) as f:
        while start > 0:
            piece = f.read(min(start, _COUNT_BYTES))
            if not piece:
                break
            number += piece.count(b"\n")
            start -= len(piece)
    return number


def block_lines(table, block, max_line_bytes=MAX_LINE_BYTES):
    """A raw batch of the block's lines: {"raw", "path", "first": 1, "start"} (see formats)."""
    path, offset, size, is_last = _locate(table, block)
    text, start = tf.numpy_function(
        functools.partial(read_block, max_line_bytes=max_line_bytes),
        [path, offset, size, is_last], (tf.string, tf.int64), stateful=False)
    start.set_shape([])
    return {"raw": _split_lines(text), "path": path, "first": tf.constant(1, tf.int64),
            "start": start}


def read_range(path, start, end):
    """Bytes [start, end) of a file: whole lines, when both are line starts."""
    with CALLS, _open(os.fsdecode(path)) as f:
        f.seek(int(start))
        return f.read(int(end - start))


def range_lines(path, start, end):
    """[n] lines of bytes [start, end) of a file (both line starts), as TextLineDataset splits."""
    text = tf.numpy_function(read_range, [path, start, end], tf.string, stateful=False)
    return _split_lines(text)


def _split_lines(text):
    """[n] lines of a string of whole lines; the piece after a final newline is no line."""
    lines = tf.strings.split(tf.strings.regex_replace(tf.reshape(text, []), "\r", ""), "\n")
    count = tf.size(lines) - tf.cast(tf.equal(lines[-1], ""), tf.int32)
    # A gather, not a slice: a slice shares its buffer, and a saved iterator holding one
    # logs "Tensor RefCount not reliable" for it.
    return tf.gather(lines, tf.range(count))


def epochs(table, read, blocks_mixed, **how):
    """epoch -> that epoch's batches of the table's files (`epoch_batches`).

    read: block id -> its parsed lines.
    """
    return lambda epoch: epoch_batches(table, epoch, read, blocks_mixed=blocks_mixed, **how)


def epoch_batches(table, epoch, read, *, seed, shuffle, process_index, process_count,
                  batch_size, blocks_mixed=BLOCKS_MIXED):
    """One epoch of this host's blocks as batches of <= batch_size lines.

    read: block id -> its parsed lines {"text": [n], ...}, called with
    blocks_mixed calls in flight. Without shuffle, blocks in file order; with
    it, in the epoch's order, blocks_mixed blocks' lines permuted together.
    """
    order = epoch_order(table, epoch, seed=seed, shuffle=shuffle, process_index=process_index,
                        process_count=process_count)
    lines = order.map(read, num_parallel_calls=blocks_mixed, deterministic=True)
    if not shuffle:
        return lines.rebatch(batch_size)
    key = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]), process_index)
    return _mixed(lines, key, blocks_mixed, batch_size)


def _mixed(lines, key, blocks_mixed, batch_size):
    """Batches of <= batch_size lines, each group of blocks_mixed blocks' lines permuted together.

    key: a stateless seed, folded with each group's index.
    """
    groups = lines.ragged_batch(blocks_mixed).enumerate()

    def permute(index, group):
        values = {name: value.flat_values for name, value in group.items()}
        count = tf.shape(values["text"], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.random.experimental.stateless_fold_in(key, index))
        return {name: tf.gather(value, order) for name, value in values.items()}

    return groups.map(permute, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True).rebatch(batch_size)
