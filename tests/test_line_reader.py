"""Chunked line reading gives exactly TextLineDataset's lines, whatever the chunk size."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from pipeline import line_reader

CASES = {
    "plain": b"alpha\nbeta\ngamma\n",
    "no final newline": b"alpha\nbeta",
    "blank lines": b"\n\nalpha\n\n\nbeta\n\n",
    "crlf": b"alpha\r\nbeta\r\n\r\ngamma",
    "lone cr": b"al\rpha\nbeta\r",
    "multibyte": "über ☃ 中文\n😀x\n".encode() * 3,
    "long line": b"x" * 50 + b"\ny\n",
    "one newline": b"\n",
    "empty": b"",
}


def _lines(path, chunk_bytes, batch_size=3, compression=None):
    ds = line_reader.line_batches(str(path), batch_size, compression, chunk_bytes=chunk_bytes)
    batches = [batch.tolist() for batch in ds.as_numpy_iterator()]
    assert all(len(batch) == batch_size for batch in batches[:-1])
    return [line for batch in batches for line in batch]


def _expected(path):
    return list(tf.data.TextLineDataset(str(path)).as_numpy_iterator())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 16, 1 << 20])
def test_lines_match_text_line_dataset(tmp_path, name, chunk_bytes):
    path = tmp_path / "lines.txt"
    path.write_bytes(CASES[name])
    assert _lines(path, chunk_bytes) == _expected(path)


def test_random_files_match_with_chunk_boundaries_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ab \n\n\r\xc3\xa9", np.uint8)
    for trial in range(20):
        path = tmp_path / f"random{trial}.txt"
        path.write_bytes(rng.choice(alphabet, size=rng.integers(0, 200)).tobytes())
        for chunk_bytes in (5, 64):
            assert _lines(path, chunk_bytes) == _expected(path), path.read_bytes()


def test_file_of_exactly_whole_chunks(tmp_path):
    path = tmp_path / "whole.txt"
    path.write_bytes(b"abc\ndefg\nhi\n" * 4)  # 48 bytes: 3 chunks of 16
    assert _lines(path, 16) == [b"abc", b"defg", b"hi"] * 4


def test_compressed_files_are_read_line_by_line(tmp_path):
    path = tmp_path / "lines.txt.gz"
    path.write_bytes(gzip.compress(CASES["crlf"]))
    assert _lines(path, 4, compression="GZIP") == [b"alpha", b"beta", b"", b"gamma"]


def test_iterator_state_restores_mid_chunk(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))
    ds = line_reader.line_batches(str(path), 4, chunk_bytes=32)
    iterator = iter(ds)
    for _ in range(5):
        next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    saved = checkpoint.write(str(tmp_path / "ckpt"))
    rest = [batch.numpy().tolist() for batch in iterator]
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).read(saved).assert_consumed()
    assert [batch.numpy().tolist() for batch in restored] == rest
    assert rest[0] == [b"line 20", b"line 21", b"line 22", b"line 23"]
