"""Text files of every supported format, read as batches of lines by native tf.data readers.

Each file yields *raw* batches (the cheapest thing to read and to shard);
`parse_fn` then turns a raw batch into {"text": [n]} after the split
between hosts (`hosts`), so a host never parses lines that another host
keeps. Problems visible from a file's first record are raised at
construction as InputError; those only visible deep in a file fail when
that batch is read, with a message that still names the file and the line.
"""

import csv
import functools
import gzip
import io
import json
import re

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from pipeline import blocks
from pipeline.errors import InputError
from pipeline.python_calls import CALLS

_GLOB_CHARS = re.compile(r"[*?\[]")
_EXTENSIONS = {
    ".txt": "txt",
    ".text": "txt",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
}
_SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")  # name.tfrecord-00001-of-00010
_UNITS = {"csv": "row", "tfrecord": "record"}  # what error messages count; lines otherwise
_VALID_UTF8 = r"[\x{0}-\x{D7FF}\x{E000}-\x{10FFFF}]*"  # any code point but a surrogate


def resolve_files(spec):
    """The files named by one path, a comma-separated list, or glob patterns (local or gs://)."""
    files = {}  # ordered and without duplicates
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if _GLOB_CHARS.search(part):
            matches = sorted(tf.io.gfile.glob(part))
            if not matches:
                raise InputError(f"glob pattern {part!r} matched no files")
        elif not tf.io.gfile.exists(part):
            raise InputError(f"data file {part!r} not found")
        elif tf.io.gfile.isdir(part):
            raise InputError(f"{part!r} is a directory; expected a file, a comma list or a glob")
        else:
            matches = [part]
        files.update(dict.fromkeys(matches))
    if not files:
        raise InputError(f"no data files in {spec!r}")
    return list(files)


def file_format(path):
    """The format from the file name: txt, json, csv or tfrecord (a .gz suffix is allowed)."""
    name = _SHARD_SUFFIX.sub("", path.lower())
    if compression_of(name):
        name = name[:-3]
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise InputError(
        f"{path!r}: unknown file type; expected one of "
        f"{', '.join(sorted(_EXTENSIONS))}, optionally followed by .gz")


def common_format(files):
    """The one format shared by all files (compressed or not); mixing formats is an error."""
    kinds = {file_format(f) for f in files}
    if len(kinds) > 1:
        raise InputError(f"data files mix formats {sorted(kinds)}: {files}")
    return kinds.pop()


def compression_of(path):
    """tf.data's compression_type for a file name."""
    return "GZIP" if path.lower().endswith(".gz") else ""


def open_text(path):
    """A text-mode reader over a local or gs:// file, gunzipping .gz files."""
    if not compression_of(path):
        return tf.io.gfile.GFile(path, "r")
    return io.TextIOWrapper(gzip.GzipFile(fileobj=tf.io.gfile.GFile(path, "rb")),
                            encoding="utf-8", newline="\n")  # lines split as tf.data does


def is_blank(line):
    """The blank-line rule of the tf.data filter (lines.keep_lines): ASCII whitespace only."""
    return not line.strip(" \t\n\r\f\v")


def check_file(path, fmt, column):
    """Fail early, naming the file, when its first record lacks what we will read from it."""
    if fmt == "json":
        with open_text(path) as f:
            for number, line in enumerate(f, 1):
                if not is_blank(line):
                    try:
                        _json_text(line, column)
                    except _BadRecord as e:
                        raise InputError(f"{path}: line {number}: {e}") from e
                    return
    elif fmt == "csv":
        csv_column_index(path, column)
    elif fmt == "tfrecord":
        for record in tf.data.TFRecordDataset(path, compression_of(path)).take(1):
            _check_example(record.numpy(), path, column)


def csv_column_index(path, column):
    """The position of the text column in the CSV header of `path`."""
    with open_text(path) as f:
        header = next(csv.reader(f), [])
    if column not in header:
        raise InputError(f"{path}: line 1: CSV header {header} has no text column {column!r}")
    return header.index(column)


def _check_example(record, path, column):
    try:
        example = tf.train.Example.FromString(record)
    except DecodeError as e:
        raise InputError(f"{path}: record 1 is not a tf.train.Example ({e})") from e
    feature = example.features.feature
    if column not in feature or feature[column].WhichOneof("kind") != "bytes_list":
        raise InputError(
            f"{path}: record 1 has no bytes feature {column!r} "
            f"(features: {sorted(feature)})")


class _BadRecord(ValueError):
    """What is wrong with one JSON line; the caller adds the file and the line number."""


def _json_text(line, column):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise _BadRecord(f"malformed JSON ({e})") from e
    if not isinstance(record, dict) or column not in record:
        raise _BadRecord(f"expected a JSON object with key {column!r}")
    text = record[column]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise _BadRecord(f"{column!r} is {type(text).__name__}, not text")
    return text


def read_file(path, fmt, compression, batch_size, column_index=0):
    """Raw batches of one file read front to back (compressed text, CSV, TFRecord).

    What `parse_fn(fmt, column)` turns into {"text": [n]}. Each carries the
    file and the number of its first line (CSV: data row, tfrecord: record)
    as "first", and "start" 0 (see `line_number`), so that errors found
    while parsing can name both. compression: a tf.data compression_type.
    Uncompressed text and JSON lines are read as blocks instead (`blocks`).
    """
    if fmt == "csv":
        batches = tf.data.experimental.CsvDataset(
            path, [tf.constant("")], compression_type=compression, header=True,
            select_cols=[column_index]).batch(batch_size).map(lambda text: text)
    elif fmt == "tfrecord":
        batches = tf.data.TFRecordDataset(path, compression).batch(batch_size)
    else:
        batches = tf.data.TextLineDataset(path, compression).batch(batch_size)
    return batches.enumerate().map(
        lambda i, raw: {"raw": raw, "path": path, "first": i * batch_size + 1,
                        "start": tf.constant(0, tf.int64)})


def parse_fn(fmt, column, invalid_utf8="error"):
    """Raw batch -> {"text": [n]}, valid UTF-8 (bad bytes replaced, or an error: invalid_utf8).

    A raw batch is {"raw": [n], "path", "first", "start"}: raw[i] is line
    `first + i` counted from byte `start` of the file (`blocks.line_number`).
    """
    if fmt == "json":  # parsed in Python, which decodes (and checks) each line itself
        return lambda b: {"text": _parse_json(b, column, invalid_utf8)}
    unit = _UNITS.get(fmt, "line")

    def parse(b):
        text = b["raw"]
        if fmt == "tfrecord":
            text = _parse_examples(b, column)
        return {"text": valid_utf8(text, invalid_utf8, b, unit)}

    return parse


def valid_utf8(text, invalid_utf8, where, unit="line"):
    """Lines with invalid UTF-8 bytes as U+FFFD ("replace"), or failing at the first ("error").

    where: the raw batch's {"path", "first", "start"}, to name the bad line.
    One vectorized check per batch: RE2 (UTF-8 mode) matches exactly the
    well-formed encodings of every code point but the surrogates, many times
    faster than transcoding; only a batch with a bad line is transcoded.
    """
    bad = tf.logical_not(tf.strings.regex_full_match(text, _VALID_UTF8))
    if invalid_utf8 == "replace":
        return tf.cond(
            tf.reduce_any(bad),
            lambda: tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"),
            lambda: text)
    return _checked(text, bad, where, unit,
                    ": invalid UTF-8; pass --invalid_utf8 replace to replace invalid bytes "
                    "with U+FFFD")


def _checked(value, bad, where, unit, what):
    """`value`, if no element is `bad`; else the batch fails with "InputError: <message>".

    The message names the file and the first bad element's number, which is
    counted only then. The trainer finds that text in the tf.data error
    (errors.message_in).
    """
    ok = tf.logical_not(tf.reduce_any(bad))
    index = tf.argmax(tf.cast(bad, tf.int64))

    def message():
        text = tf.numpy_function(
            functools.partial(_error_message, unit=unit, what=what),
            [where["path"], where["first"] + index, where["start"]], tf.string, stateful=False)
        return tf.reshape(text, [])

    check = tf.debugging.Assert(ok, [tf.cond(ok, lambda: tf.constant(""), message)])
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _error_message(path, number, start, unit, what):
    path = path.decode()
    return f"InputError: {path}: {unit} {blocks.line_number(path, number, start)}{what}".encode()


def _parse_json(batch, column, invalid_utf8):
    # A module-level function, so AutoGraph leaves the per-line Python alone (10x faster).
    parse = functools.partial(_json_texts, column=column, invalid_utf8=invalid_utf8)
    text = tf.numpy_function(parse, [batch["raw"], batch["path"], batch["first"],
                                     batch["start"]], tf.string, stateful=False)
    text.set_shape([None])
    return text


def _json_texts(lines, path, first, start, column, invalid_utf8):
    with CALLS:
        return _json_lines_texts(lines, path.decode(), first, start, column, invalid_utf8)


def _json_lines_texts(lines, path, first, start, column, invalid_utf8):
    texts = []
    for index, raw in enumerate(lines):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if invalid_utf8 != "replace":
                raise InputError(
                    f"{path}: line {blocks.line_number(path, first + index, start)}: invalid "
                    f"UTF-8 ({e.reason} at byte {e.start}); pass --invalid_utf8 replace to "
                    "replace invalid bytes with U+FFFD") from e
            line = raw.decode("utf-8", "replace")
        try:
            texts.append("" if is_blank(line) else _json_text(line, column))
        except _BadRecord as e:
            raise InputError(
                f"{path}: line {blocks.line_number(path, first + index, start)}: {e}") from e
    return np.array(texts, dtype=object)


def _parse_examples(batch, column):
    records = batch["raw"]
    values = tf.io.parse_example(records, {column: tf.io.VarLenFeature(tf.string)})[column]
    counts = tf.math.bincount(
        tf.cast(values.indices[:, 0], tf.int32), minlength=tf.size(records), dtype=tf.int32)
    return _checked(values.values, tf.not_equal(counts, 1), batch, "record",
                    f" has no single bytes feature {column!r}")
