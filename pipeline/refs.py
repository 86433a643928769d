"""Chinese whole-word reference files (run_chinese_ref.py format): read, checked, aligned.

Everything the pipeline does with a ref file lives here (writing one, and
jieba segmentation on the fly, are `chinese_ref`'s):
- which text a ref file may go with (`check_pairing`): one .txt file;
- reading the pair (`epochs`): `check_refs` reads both files once before
  training and checks every ref line. For an uncompressed pair it also
  records, for each block of the text file, the number of its first line
  and where its refs begin in the ref file, so the pair is read in block
  order like any text file (`blocks`), a block and its range of refs at a
  time. A compressed pair is read front to back, zipped line by line;
- aligning refs to tokens (`mark_continuations`, called by the tokenizer
  stage), with errors that name both files and both lines.

A ref file holds one JSON list per non-blank line of its text file.
"""

import contextlib
import dataclasses
import gzip
import json
from typing import Optional

import numpy as np
import tensorflow as tf

from pipeline import blocks, formats, hosts, lines
from pipeline.errors import InputError


@dataclasses.dataclass(frozen=True)
class RefSource:
    """Names the files a batch's Chinese references came from, for error messages."""

    text_file: Optional[str]
    ref_file: Optional[str]


def check_pairing(ref_file, *, files=None, fmt=None, dataset=None):
    """A ref file goes with exactly one .txt text file, never with a dataset."""
    if dataset:
        raise InputError(f"reference file {ref_file} applies to a single .txt file, not to "
                         f"dataset {dataset}")
    if len(files) != 1 or fmt != "txt":
        raise InputError(
            f"reference file {ref_file} needs exactly one .txt text file, got {files}")


def epochs(text_path, ref_path, config, **read):
    """epoch -> this host's batches {"text", "chinese_ref", "ref_lines"} of the pair.

    Uncompressed: blocks in the epoch's order (`blocks.epoch_batches`);
    compressed: front to back.
    """
    if formats.compression_of(text_path) or formats.compression_of(ref_path):
        return sequential_epochs(text_path, ref_path, config.invalid_utf8, **read)
    table = blocks.block_table([text_path], config.read_block_bytes, read["process_count"])
    return blocks.epochs(table, block_reader(text_path, ref_path, table, config.invalid_utf8),
                         config.blocks_mixed, **read)


@dataclasses.dataclass(frozen=True)
class RefBlocks:
    """Per block of the text file: its first line's number, its refs' first line and byte."""

    text_first: np.ndarray  # int64 [blocks]
    ref_first: np.ndarray  # int64 [blocks]
    ref_start: np.ndarray  # int64 [blocks + 1]: the last is the end of the ref file


def _lines(path):
    """(number, byte offset, line with its newline) of a local or gs:// file, gunzipped."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if formats.compression_of(path) else raw
        offset = 0
        for number, line in enumerate(stream, 1):
            yield number, offset, line
            offset += len(line)


def _blank(line):
    # Invalid bytes are the tf.data stage's to report (with --invalid_utf8), not this pass's.
    return formats.is_blank(line.decode("utf-8", "replace"))


def check_refs(text_path, ref_path, table=None):
    """Ref lines must be JSON lists of integers, one per non-blank text line.

    With the text file's block table, returns its RefBlocks.
    """
    if not tf.io.gfile.exists(ref_path):
        raise InputError(f"reference file {ref_path!r} (for {text_path}) not found")

    def mismatch(number, what):
        return InputError(f"reference file {ref_path} does not match text file {text_path}: "
                          f"ref line {number}: {what}")

    def checked(ref):
        number, _, line = ref
        line = line.decode("utf-8", "replace")
        try:
            values = json.loads(line)
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, list) or not all(type(i) is int and i >= 0 for i in values):
            raise mismatch(number, "expected a JSON list of non-negative integers, got "
                                   f"{line.strip()[:80]!r}")
        return ref

    num_blocks = table.num_blocks if table is not None else 0
    found = RefBlocks(np.zeros(num_blocks, np.int64), np.zeros(num_blocks, np.int64),
                      np.zeros(num_blocks + 1, np.int64))
    waiting = []  # blocks whose refs begin at the next non-blank ref line
    block = count = number = 0
    with contextlib.closing(_lines(text_path)) as text, contextlib.closing(
            _lines(ref_path)) as all_refs:
        refs = (ref for ref in all_refs if not _blank(ref[2]))
        for number, offset, line in text:
            while block < num_blocks and block * table.block_bytes <= offset:
                found.text_first[block] = number  # the first line that starts in it, if any
                waiting.append(block)
                block += 1
            if _blank(line):
                continue
            count += 1
            ref = next(refs, None)
            if ref is None:
                raise mismatch(count, f"missing; text line {number} (non-empty line {count}) "
                                      "has no reference")
            found.ref_first[waiting], found.ref_start[waiting] = checked(ref)[:2]
            waiting = []
        extra = next(refs, None)
        if extra is not None:
            raise mismatch(checked(extra)[0], f"text file has only {count} non-empty lines")
    if table is not None:
        found.text_first[block:] = number + 1
        found.ref_start[waiting + list(range(block, num_blocks + 1))] = blocks.file_size(
            ref_path)
        return found
    return None


def block_reader(text_path, ref_path, table, invalid_utf8):
    """block id -> {"text", "chinese_ref", "ref_lines"} of the block's non-blank lines.

    "ref_lines" holds each pair's (text line, ref line) numbers, for errors.
    """
    found = check_refs(text_path, ref_path, table)
    text_first, ref_first, ref_start = (
        tf.constant(values) for values in (found.text_first, found.ref_first, found.ref_start))
    changed = (f"InputError: text file {text_path} or reference file {ref_path} changed after "
               "they were checked: they no longer match")

    def numbered(raw, path, first):
        """Non-blank lines and their numbers; invalid UTF-8 as invalid_utf8 says."""
        valid = formats.valid_utf8(raw, invalid_utf8, {"path": path, "first": first,
                                                       "start": tf.constant(0, tf.int64)})
        keep = tf.logical_not(lines.blank(valid))
        numbers = first + tf.range(tf.size(valid, tf.int64))
        return tf.boolean_mask(valid, keep), tf.boolean_mask(numbers, keep)

    def read(block):
        text = blocks.block_lines(table, block)
        texts, line_numbers = numbered(text["raw"], text["path"], tf.gather(text_first, block))
        refs, ref_numbers = numbered(
            blocks.range_lines(ref_path, tf.gather(ref_start, block),
                               tf.gather(ref_start, block + 1)),
            ref_path, tf.gather(ref_first, block))
        check = tf.debugging.Assert(tf.equal(tf.size(texts), tf.size(refs)), [changed])
        with tf.control_dependencies([check]):
            return {"text": tf.identity(texts), "chinese_ref": tf.strings.strip(refs),
                    "ref_lines": tf.stack([line_numbers, ref_numbers], axis=1)}

    return read


def sequential_epochs(text_path, ref_path, invalid_utf8, *, process_index, process_count,
                      shuffle, seed, batch_size):
    """epoch -> batches of a compressed pair, both read front to back and zipped."""
    del shuffle, seed  # one file: nothing to reorder before the line buffer
    check_refs(text_path, ref_path)

    def numbered_lines(path):
        """{"text", "line": its number in the file} for each non-blank line."""
        def numbered(b):
            text = formats.valid_utf8(b["raw"], invalid_utf8, b)
            return lines.keep_lines(
                {"text": text, "line": b["first"] + tf.range(tf.size(text, tf.int64))})

        raw = formats.read_file(path, "txt", formats.compression_of(path), batch_size)
        return raw.map(numbered).unbatch()

    def one_epoch(epoch):
        del epoch
        ds = tf.data.Dataset.zip(numbered_lines(text_path),
                                 numbered_lines(ref_path)).batch(batch_size)
        ds = ds.map(lambda t, r: {"text": t["text"], "chinese_ref": tf.strings.strip(r["text"]),
                                  "ref_lines": tf.stack([t["line"], r["line"]], axis=1)})
        return hosts.shard_batches(ds, process_index, process_count)

    return one_epoch


def mark_continuations(starts, offsets, lengths, texts, refs, ref_lines, source):
    """Marks the tokens that ref lists name (CLS at index 0) as word continuations.

    starts: flat word-start flags of the batch's tokens, changed in place;
    row r's tokens are starts[offsets[r]:offsets[r] + lengths[r]].
    ref_lines holds each row's (text line, ref line) numbers, for errors.
    """
    for row, ref in enumerate(refs):
        if ref == b"[]" or not ref:
            continue
        indices = np.asarray(json.loads(ref), np.int64)
        if indices.size and (indices.min() < 1 or indices.max() > lengths[row]):
            bad = int(indices[(indices < 1) | (indices > lengths[row])][0])
            text_line, ref_line = ref_lines[row]
            line = texts[row].decode("utf-8", "replace")
            raise InputError(
                f"reference file {source.ref_file} does not match text file "
                f"{source.text_file}: ref line {ref_line}: reference index {bad} is outside the "
                f"{lengths[row]} tokens (indices 1..{lengths[row]}, CLS at 0) of text line "
                f"{text_line}: {line[:200]!r}")
        starts[offsets[row] + indices - 1] = False
