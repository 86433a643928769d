"""line_batches on files: formats, paths, blank lines, held-out split, sharding, shuffling."""

import csv
import dataclasses
import gzip
import json

import pytest
import tensorflow as tf

from pipeline.config import DataConfig
from pipeline.formats import file_format
from pipeline.errors import InputError
from pipeline.sources import line_batches

LINES = [f"line {i}: {'word ' * (i % 7)}end" for i in range(250)]


def read(config, split="train", read_batch_size=1024, **kwargs):
    """Every text of one epoch, checking the batch contract on the way."""
    texts = []
    for batch in line_batches(config, split, read_batch_size=read_batch_size, **kwargs):
        assert set(batch) <= {"text", "chinese_ref"}
        assert 1 <= batch["text"].shape[0] <= read_batch_size
        texts.extend(t.decode() for t in batch["text"].numpy())
    return texts


def nonblank(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def write_lines(path, lines, fmt):
    """`lines` as a file of format fmt (txt, json, csv, tfrecord; .gz by the name)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    if fmt == "tfrecord":
        with tf.io.TFRecordWriter(str(path)) as w:
            for line in lines:
                feature = {
                    "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[line.encode()])),
                    "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(line)]))}
                w.write(tf.train.Example(
                    features=tf.train.Features(feature=feature)).SerializeToString())
        return path
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        if fmt == "txt":
            f.writelines(line + "\n" for line in lines)
        elif fmt == "json":
            f.writelines(json.dumps({"id": i, "text": line}) + "\n" for i, line in enumerate(lines))
        else:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(lines))
    return path


def files_config(spec, **kwargs):
    """No held-out split: the validation source is set (to the same files)."""
    return DataConfig(train_file=spec, validation_file=spec, **kwargs)


def test_txt_yields_every_nonblank_line_in_order(corpus_file):
    assert read(files_config(str(corpus_file)), read_batch_size=500) == nonblank(corpus_file)


def test_blank_and_whitespace_lines_are_skipped(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("a\n\n   \nb\n\t\r\n\nc d\n", encoding="utf-8")
    assert read(files_config(str(path)), read_batch_size=2) == ["a", "b", "c d"]


@pytest.mark.parametrize("name,fmt", [
    ("x.txt", "txt"), ("x.txt.gz", "txt"), ("x.json", "json"), ("x.jsonl", "json"),
    ("x.jsonl.gz", "json"), ("x.csv", "csv"), ("x.tfrecord", "tfrecord")])
def test_each_format(tmp_path, name, fmt):
    lines = LINES + ['quoted "text", with commas', "ünïcödé 中文"]
    path = write_lines(tmp_path / name, lines, fmt)
    assert read(files_config(str(path)), read_batch_size=64) == lines


def test_csv_quoted_newline_and_blank_field(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('text,id\n"two\nlines",1\n,2\n"three",3\n', encoding="utf-8")
    assert read(files_config(str(path))) == ["two\nlines", "three"]


def test_comma_list_and_glob_of_plain_and_gzipped_files(tmp_path):
    parts = [LINES[i::3] for i in range(3)]
    paths = [str(write_lines(tmp_path / (f"part{i}.txt" + ".gz" * (i == 1)), p, "txt"))
             for i, p in enumerate(parts)]
    listed = read(files_config(",".join(paths)), read_batch_size=16)
    globbed = read(files_config(str(tmp_path / "part*.txt*")), read_batch_size=16)
    assert sorted(listed) == sorted(globbed) == sorted(LINES)
    assert read(files_config(paths[0] + ", " + paths[0])) == parts[0]  # duplicates read once


def test_held_out_split_disjoint_stable_and_sized(corpus_file):
    config = DataConfig(train_file=str(corpus_file), validation_split_percentage=10)
    train, validation = read(config, "train"), read(config, "validation")
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(nonblank(corpus_file))
    assert 0.08 < len(validation) / (len(train) + len(validation)) < 0.12
    assert read(config, "validation") == validation
    on_hosts = [read(config, "validation", process_index=i, process_count=3, read_batch_size=100)
                for i in range(3)]
    assert sorted(sum(on_hosts, [])) == sorted(validation)


def test_validation_file_disables_hold_out(tmp_path, corpus_file):
    other = write_lines(tmp_path / "v.txt", LINES, "txt")
    config = DataConfig(train_file=str(corpus_file), validation_file=str(other))
    assert read(config, "validation") == LINES
    assert len(read(config, "train")) == len(nonblank(corpus_file))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n_files,hosts", [(4, 2), (5, 3), (1, 3), (2, 5)])
def test_sharding_disjoint_and_complete(tmp_path, n_files, hosts, shuffle):
    paths = [str(write_lines(tmp_path / f"s{i}.txt", LINES[i::n_files], "txt"))
             for i in range(n_files)]
    config = files_config(",".join(paths), shuffle_buffer_size=50)
    shards = [read(config, process_index=i, process_count=hosts, read_batch_size=10,
                   shuffle=shuffle) for i in range(hosts)]
    assert sorted(sum(shards, [])) == sorted(LINES)
    assert all(shards)


def test_shuffle_deterministic_and_reshuffled_each_epoch(corpus_file):
    config = files_config(str(corpus_file), shuffle_buffer_size=2000, seed=3)
    ds = line_batches(config, "train", shuffle=True, read_batch_size=256, num_epochs=2)
    epochs = [t.decode() for b in ds for t in b["text"].numpy()]
    first, second = epochs[:len(epochs) // 2], epochs[len(epochs) // 2:]
    lines = nonblank(corpus_file)
    assert sorted(first) == sorted(second) == sorted(lines)
    assert first != lines and first != second
    assert read(config, shuffle=True, read_batch_size=256) == first
    assert read(dataclasses.replace(config, seed=4), shuffle=True,
                read_batch_size=256) != first


def test_file_order_reshuffled_each_epoch(tmp_path):
    """Compressed files are read whole, one after another, in a fresh order each epoch."""
    paths = [str(write_lines(tmp_path / f"f{i}.txt.gz", [f"file {i}"] * 5, "txt"))
             for i in range(6)]
    config = files_config(",".join(paths), shuffle_buffer_size=1, seed=0)
    ds = line_batches(config, "train", shuffle=True, read_batch_size=5, num_epochs=6)
    order = [b["text"].numpy()[0].decode() for b in ds]
    epochs = {tuple(order[i:i + 6]) for i in range(0, 36, 6)}
    assert all(sorted(e) == sorted(f"file {i}" for i in range(6)) for e in epochs)
    assert len(epochs) > 1


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_iterator_checkpoint_restores_position(tmp_path, corpus_file, fmt):
    lines = nonblank(corpus_file)
    paths = [str(write_lines(tmp_path / f"c{i}.{fmt}", lines[i::3], fmt)) for i in range(3)]
    config = files_config(",".join(paths), shuffle_buffer_size=3000)
    ds = line_batches(config, "train", shuffle=True, read_batch_size=128).repeat()
    it = iter(ds)
    for _ in range(5):
        next(it)
    checkpoint = tf.train.Checkpoint(iterator=it)
    path = checkpoint.write(str(tmp_path / "it"))
    expected = [next(it)["text"].numpy().tolist() for _ in range(3)]
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    assert [next(restored)["text"].numpy().tolist() for _ in range(3)] == expected


@pytest.mark.parametrize("spec,message", [
    ("missing.txt", "missing.txt' not found"),
    ("nothing*.txt", "matched no files"),
    ("x.parquet", "unknown file type"),
])
def test_path_errors(tmp_path, spec, message):
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(InputError, match=message):
        line_batches(files_config(str(tmp_path / spec)), "train")


def test_mixed_formats_error(tmp_path):
    a = write_lines(tmp_path / "a.txt", LINES, "txt")
    b = write_lines(tmp_path / "b.jsonl", LINES, "json")
    with pytest.raises(InputError, match="mix formats"):
        line_batches(files_config(f"{a},{b}"), "train")


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", "{not json\n", r"bad.jsonl: line 1: malformed JSON"),
    ("col.jsonl", '\n{"body": "x"}\n', r"col.jsonl: line 2: expected a JSON object with key"),
    ("col.csv", "id,body\n1,x\n", r"col.csv: line 1: CSV header \['id', 'body'\] has no text"),
])
def test_first_record_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        line_batches(files_config(str(tmp_path / name)), "train")


def test_tfrecord_without_feature(tmp_path):
    path = write_lines(tmp_path / "x.tfrecord", LINES, "tfrecord")
    with pytest.raises(InputError, match=r"x.tfrecord: record 1 has no bytes feature 'body'"):
        line_batches(files_config(str(path), text_column="body"), "train")


def test_errors_deep_in_a_file_name_file_and_line(tmp_path):
    good = [json.dumps({"text": line}) for line in LINES]
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(good[:100] + ["{broken"] + good[100:]), encoding="utf-8")
    with pytest.raises(tf.errors.OpError, match=r"deep.jsonl: line 101: malformed JSON"):
        read(files_config(str(path)), read_batch_size=16)
    records = tmp_path / "deep.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature={
            "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ok"]))}))
            .SerializeToString())
        w.write(tf.train.Example().SerializeToString())
    with pytest.raises(tf.errors.OpError, match=r"deep.tfrecord.*record.*2"):
        read(files_config(str(records)))


@pytest.mark.parametrize("name,expected", [
    ("a.TXT", "txt"), ("a.text.gz", "txt"), ("gs://b/a.jsonl.gz", "json"), ("a.csv", "csv"),
    ("a.tfrecord-00001-of-00010", "tfrecord"), ("a.tfrecords.gz", "tfrecord")])
def test_file_format_by_name(name, expected):
    assert file_format(name) == expected


def test_setting_errors(corpus_file):
    with pytest.raises(InputError, match="no data"):
        line_batches(DataConfig(), "train")
    with pytest.raises(InputError, match="validation_split_percentage"):
        line_batches(DataConfig(train_file=str(corpus_file), validation_split_percentage=101),
                     "validation")
    with pytest.raises(ValueError, match="split must be"):
        line_batches(DataConfig(train_file=str(corpus_file)), "test")
