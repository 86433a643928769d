"""Block reading: every line once per epoch in a fresh seeded order, exact resume, bounded lines.

The lines are TextLineDataset's (the reference here) whatever the block
size, the number of hosts or the order.
"""

import dataclasses
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import blocks, errors
from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline.sources import line_batches

CASES = {
    "plain": b"alpha\nbeta\ngamma\n",
    "no final newline": b"alpha\nbeta",
    "blank lines": b"\n\nalpha\n\n\nbeta\n\n",
    "crlf": b"alpha\r\nbeta\r\n\r\ngamma",
    "lone cr": b"al\rpha\nbeta\r",
    "multibyte": "über ☃ 中文\n😀x\n".encode() * 3,
    "lines longer than a block": b"x" * 50 + b"\ny\n" + b"z" * 70,
    "no newline at all": b"just one line without an end " * 5,
    "one newline": b"\n",
    "empty": b"",
    "many short lines": b"".join(b"line %d\n" % i for i in range(40)),
}
BLOCK_SIZES = [1, 3, 16, 1 << 20]


def expected_lines(path):
    return list(tf.data.TextLineDataset(str(path)).as_numpy_iterator())


def epoch_lines(paths, block_bytes, *, shuffle, process_index=0, process_count=1, epoch=0,
                blocks_mixed=3, batch_size=4):
    """One epoch of one host's raw lines, straight from the block reader (blank ones kept)."""
    table = blocks.block_table([str(p) for p in paths], block_bytes, process_count)
    ds = blocks.epoch_batches(
        table, epoch, lambda block: {"text": blocks.block_lines(table, block)["raw"]},
        seed=5, shuffle=shuffle, process_index=process_index, process_count=process_count,
        batch_size=batch_size, blocks_mixed=blocks_mixed)
    batches = [b["text"].tolist() for b in ds.as_numpy_iterator()]
    assert all(len(b) <= batch_size for b in batches)
    return [line for batch in batches for line in batch]


def all_hosts(paths, block_bytes, process_count, **kwargs):
    return [epoch_lines(paths, block_bytes, process_index=i, process_count=process_count,
                        **kwargs) for i in range(process_count)]


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
@pytest.mark.parametrize("name", CASES)
def test_every_line_once_per_epoch_on_any_number_of_hosts(tmp_path, name, block_bytes):
    path = tmp_path / "lines.txt"
    path.write_bytes(CASES[name])
    expected = expected_lines(path)
    assert epoch_lines([path], block_bytes, shuffle=False) == expected  # in file order
    for hosts, shuffle in ((1, True), (2, True), (3, True)):
        shares = all_hosts([path], block_bytes, hosts, shuffle=shuffle)
        assert sorted(sum(shares, [])) == sorted(expected), (hosts, shuffle)


def test_random_files_with_block_boundaries_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ab \n\n\r\xc3\xa9", np.uint8)
    paths = []
    for trial in range(8):
        path = tmp_path / f"random{trial}.txt"
        path.write_bytes(rng.choice(alphabet, size=rng.integers(0, 200)).tobytes())
        paths.append(path)
        for block_bytes in (5, 64):
            assert epoch_lines([path], block_bytes, shuffle=False) == expected_lines(path)
    expected = sorted(line for path in paths for line in expected_lines(path))
    for hosts in (1, 2, 3):  # blocks over all files at once
        shares = all_hosts(paths, 9, hosts, shuffle=True, blocks_mixed=4)
        assert sorted(sum(shares, [])) == expected, hosts


def test_blocks_shrink_so_that_every_host_gets_a_share(tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))  # 890 bytes
    table = blocks.block_table([str(path)], 1 << 20, process_count=4)
    assert table.num_blocks >= 4 * blocks.MIN_BLOCKS_PER_HOST
    shares = all_hosts([path], 1 << 20, 4, shuffle=True)
    assert all(shares) and sorted(sum(shares, [])) == sorted(expected_lines(path))


def sorted_file(path, lines=6000):
    """A file whose lines are in the order of the key each starts with (an ordered corpus)."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(50)]
    with open(path, "w", encoding="utf-8") as f:
        for key in range(lines):
            f.write(f"{key:06d} " + " ".join(rng.choice(words, rng.integers(3, 30))) + "\n")
    return path


def stream_keys(config, **kwargs):
    return [int(t[:6]) for b in line_batches(config, "train", **kwargs) for t in b["text"].numpy()]


def spearman(keys):
    """Spearman's rho of stream position against file position (keys are file positions)."""
    ranks = np.argsort(np.argsort(keys))
    return float(np.corrcoef(np.arange(len(keys)), ranks)[0, 1])


def test_sorted_file_is_read_in_an_order_uncorrelated_with_the_file(tmp_path):
    """Spearman's rho over one epoch is near 0; it was 0.99 reading front to back.

    Reading this file as before (in order, through the same line buffer of
    1000 lines) gives rho 0.99 and batches of 256 lines that span about 2 of
    the file's 100 regions of 60 lines; a global shuffle spans about 92.
    """
    path = sorted_file(tmp_path / "sorted.txt")  # 6000 lines, 590 kB
    config = DataConfig(train_file=str(path), validation_file=str(path), seed=2,
                        shuffle_buffer_size=1000, read_block_bytes=2048, blocks_mixed=16)
    keys = stream_keys(config, shuffle=True, read_batch_size=256)
    assert sorted(keys) == list(range(6000))
    assert abs(spearman(keys)) < 0.1
    regions = [len({k * 100 // 6000 for k in keys[i:i + 256]}) for i in range(0, 5888, 256)]
    assert np.mean(regions) > 20
    assert spearman(stream_keys(config, read_batch_size=256)) == 1.0  # validation: file order


def test_each_epoch_in_a_fresh_order_deterministic_per_seed(tmp_path):
    path = sorted_file(tmp_path / "sorted.txt", lines=2000)
    config = DataConfig(train_file=str(path), validation_file=str(path), seed=3,
                        shuffle_buffer_size=100, read_block_bytes=1024, blocks_mixed=4)
    keys = stream_keys(config, shuffle=True, read_batch_size=64, num_epochs=3)
    epochs = [keys[i * 2000:(i + 1) * 2000] for i in range(3)]
    assert all(sorted(e) == list(range(2000)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert stream_keys(config, shuffle=True, read_batch_size=64, num_epochs=3) == keys
    other = dataclasses.replace(config, seed=4)
    assert stream_keys(other, shuffle=True, read_batch_size=64) != epochs[0]


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_iterator_resumes_exactly_mid_epoch(tmp_path, fmt, capfd):
    path = tmp_path / f"lines.{fmt}"
    texts = [f"line {i} " + "word " * (i % 9) for i in range(3000)]
    lines = [f'{{"text": "{t}"}}' for t in texts] if fmt == "jsonl" else texts
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(train_file=str(path), validation_file=str(path), seed=1,
                        shuffle_buffer_size=200, read_block_bytes=700, blocks_mixed=4)
    ds = line_batches(config, "train", shuffle=True, read_batch_size=50, num_epochs=None)
    iterator = iter(ds)
    for _ in range(70):  # into the second epoch (60 batches each)
        next(iterator)
    saved = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "ckpt"))
    expected = [next(iterator)["text"].numpy().tolist() for _ in range(80)]
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).read(saved).assert_consumed()
    assert [next(restored)["text"].numpy().tolist() for _ in range(80)] == expected
    in_order = iter(line_batches(config, "validation", read_batch_size=50))
    next(in_order)
    tf.train.Checkpoint(iterator=in_order).write(str(tmp_path / "in_order"))
    assert "RefCount" not in capfd.readouterr().err  # TensorFlow's complaint about slices


def test_an_endless_stream_of_blank_lines_ends_instead_of_spinning(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\t\n" * 50)
    config = DataConfig(train_file=str(path), validation_file=str(path), read_block_bytes=8)
    assert list(line_batches(config, "train", shuffle=True, num_epochs=None)) == []


def test_errors_name_the_line_whatever_the_order(tmp_path):
    lines = [b"line %d" % i for i in range(400)]
    lines[236] = b"caf\xe9 au lait"
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = DataConfig(train_file=str(path), validation_file=str(path), read_block_bytes=64)
    with pytest.raises(tf.errors.OpError, match=r"latin1.txt: line 237: invalid UTF-8"):
        list(line_batches(config, "train", shuffle=True))
    records = [b'{"text": "record %d"}' % i for i in range(400)]
    records[301] = b'{"body": "x"}'
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"\r\n".join(records))
    config = DataConfig(train_file=str(path), validation_file=str(path), read_block_bytes=64)
    with pytest.raises(tf.errors.OpError, match=r"records.jsonl: line 302: expected a JSON"):
        list(line_batches(config, "train", shuffle=True))


def test_a_line_over_the_limit_is_refused_naming_file_line_and_limit(tmp_path):
    def lines(content):
        path = tmp_path / "long.txt"
        path.write_bytes(content)
        table = blocks.block_table([str(path)], 256)
        ds = tf.data.Dataset.range(table.num_blocks).map(
            lambda b: blocks.block_lines(table, b, max_line_bytes=4096)["raw"])
        return [line for b in ds for line in b.numpy()]

    assert lines(b"short\n" * 3 + b"x" * 4096 + b"\nend") == [b"short"] * 3 + [b"x" * 4096,
                                                                               b"end"]
    with pytest.raises(tf.errors.OpError,
                       match=r"long.txt: line 4 is longer than 4096 bytes, the limit for one"):
        lines(b"short\n" * 3 + b"x" * 4097 + b"\nend\n")


def test_a_failed_read_is_one_line_without_the_readers_traceback(tmp_path):
    """A read that fails (here: the file is gone; on gs://, retries ran out) inside the
    block reader's Python call reaches the user as its own message on one line."""
    path = tmp_path / "gone.txt"
    path.write_bytes(b"line\n" * 100)
    table = blocks.block_table([str(path)], 64)
    path.unlink()
    ds = tf.data.Dataset.range(table.num_blocks).map(lambda b: blocks.block_lines(table, b)["raw"])
    with pytest.raises(tf.errors.OpError) as error:
        list(ds)
    assert "Traceback" in str(error.value)  # what TensorFlow hands over
    message = errors.message_in(str(error.value))
    assert "Traceback" not in message and "\n" not in message
    assert message.startswith("FileNotFoundError: ") and str(path) in message, message


def test_a_file_without_newlines_is_read_in_linear_time(tmp_path):
    """Blocks inside a long line read only themselves; the one where it starts reads it once."""
    def read_all(size):
        path = tmp_path / f"{size}.txt"
        path.write_bytes(b"w" * size)
        start = time.perf_counter()
        table = blocks.block_table([str(path)], 1 << 16)
        texts = [blocks.read_block(str(path).encode(), b * table.block_bytes,
                                   table.block_bytes, b == table.num_blocks - 1,
                                   max_line_bytes=size)[0]
                 for b in range(table.num_blocks)]
        assert [len(t) for t in texts] == [size] + [0] * (table.num_blocks - 1)
        return time.perf_counter() - start

    read_all(1 << 20)  # warm up
    small = min(read_all(4 << 20) for _ in range(3))
    large = min(read_all(32 << 20) for _ in range(3))
    assert large / small < 24  # linear: 8; the chunked reader this replaced was quadratic: 64


def test_a_file_appended_to_while_read_is_read_to_its_new_end(tmp_path):
    """The last block of a file reads to the end the file has then: no length error."""
    path = tmp_path / "growing.txt"
    path.write_text("".join(f"old {i}\n" for i in range(200)))
    old = [f"old {i}" for i in range(200)]
    new = [f"new {i}" for i in range(30)]
    config = DataConfig(train_file=str(path), validation_file=str(path), read_block_bytes=128,
                        shuffle_buffer_size=10)
    ds = line_batches(config, "train", shuffle=True, read_batch_size=20, num_epochs=None)
    iterator = iter(ds)
    first = [t.decode() for _ in range(5) for t in next(iterator)["text"].numpy()]
    with open(path, "a", encoding="utf-8") as f:  # while an epoch is being read
        f.writelines(line + "\n" for line in new)
    seen = first + [t.decode() for _ in range(60) for t in next(iterator)["text"].numpy()]
    assert sorted(seen[:200]) == sorted(old) and set(new) <= set(seen)
    # A stream made before the file grew reads the new lines, each once an epoch.
    path.write_text("".join(line + "\n" for line in old))
    stale = line_batches(config, "train", shuffle=True, read_batch_size=20, num_epochs=2)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in new)
    epochs = [t.decode() for b in stale for t in b["text"].numpy()]
    assert sorted(epochs[:230]) == sorted(epochs[230:]) == sorted(old + new)
