"""The mixture sampler on real files and the real tokenizer: shares, determinism, resume, hosts."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import errors, inputs, mixture
from pipeline.config import DataConfig
from pipeline.mixture_spec import parse_mixture

L = 16
WORDS = ("apple", "banana", "cherry")
SIZES = (4000, 1000, 60)
SPEC = "a={}:0.6,b={}:0.3,c={}:0.1"
CHECKPOINT_AT = 2000
CONFIG = DataConfig(line_by_line=True, max_seq_length=L, validation_split_percentage=0,
                    shuffle_buffer_size=200, seed=3)


def _write_lines(path, word, start, stop):
    path.write_text("".join(f"{word} {i}\n" for i in range(start, stop)), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Lines '<word> <i>': 4000 apples, 1000 bananas, 60 cherries (sizes differ)."""
    directory = tmp_path_factory.mktemp("mixture")
    return [_write_lines(directory / f"{word}.txt", word, 0, n)
            for word, n in zip(WORDS, SIZES)]


def _one_epoch(tokenizer, vocab, process_index=0, process_count=1):
    def one_epoch(config):
        return inputs._training_epoch(  # pylint: disable=protected-access
            config, tokenizer, vocab, dict(process_index=process_index,
                                           process_count=process_count))

    return one_epoch


def _mixed(spec, tokenizer, vocab, config=CONFIG, process_index=0, process_count=1, **kwargs):
    return mixture.train_examples(config, parse_mixture(spec, **kwargs), _one_epoch(
        tokenizer, vocab, process_index, process_count), process_index=process_index, **kwargs)


def _collect(iterator, n):
    """The next n examples as numpy arrays (the last batch cut)."""
    parts, got = [], 0
    while got < n:
        batch = {key: value.numpy() for key, value in next(iterator).items()}
        parts.append(batch)
        got += len(batch["source"])
    return {key: np.concatenate([p[key] for p in parts])[:n] for key in parts[0]}


def _lines(tokenizer, examples):
    return tokenizer.batch_decode(examples["input_ids"], skip_special_tokens=True)


def _assert_shares(sources, expected):
    """Each source's share within 3 binomial standard deviations of its probability."""
    n = len(sources)
    shares = np.bincount(sources, minlength=len(expected)) / n
    bounds = 3 * np.sqrt(np.asarray(expected) * (1 - np.asarray(expected)) / n)
    assert (np.abs(shares - expected) <= bounds).all(), (shares, expected, bounds)


def _assert_tags_true(tokenizer, examples):
    """Each example's `source` is the source its text came from."""
    first = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in WORDS]
    assert len(set(first)) == len(WORDS)
    np.testing.assert_array_equal(examples["input_ids"][:, 1],
                                  np.asarray(first)[examples["source"]])


@pytest.fixture(scope="module")
def stream(files, tokenizer, vocab, tmp_path_factory):
    """50,000 examples of one 0.6/0.3/0.1 mixture, and its iterator saved after 2000."""
    ds, weights = _mixed(SPEC.format(*files), tokenizer, vocab)
    iterator = iter(ds)
    start = _collect(iterator, CHECKPOINT_AT)
    path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path_factory.mktemp("ckpt") / "it"))
    rest = _collect(iterator, 50_000 - CHECKPOINT_AT)
    examples = {key: np.concatenate([start[key], rest[key]]) for key in start}
    return examples, weights, path


def test_shares_follow_the_weights(stream, tokenizer):
    examples, weights, _ = stream
    assert weights == pytest.approx([0.6, 0.3, 0.1])
    _assert_shares(examples["source"], weights)
    _assert_tags_true(tokenizer, examples)


def test_shares_follow_temperature_weights(files, tokenizer, vocab):
    a, b, c = files
    ds, weights = _mixed(f"a={a},b={b},c={c}", tokenizer, vocab, temperature=2.0)
    raw = np.sqrt([os.path.getsize(f) for f in files])
    assert weights == pytest.approx(raw / raw.sum())
    assert weights[0] < 0.7 and weights[2] > 0.05  # flatter than proportional to size
    examples = _collect(iter(ds), 50_000)
    _assert_shares(examples["source"], weights)
    _assert_tags_true(tokenizer, examples)


def test_the_same_seed_gives_the_same_stream(stream, files, tokenizer, vocab):
    examples = stream[0]
    again = _collect(iter(_mixed(SPEC.format(*files), tokenizer, vocab)[0]), CHECKPOINT_AT)
    assert all(np.array_equal(examples[key][:CHECKPOINT_AT], again[key]) for key in again)


def test_resume_restores_every_source_position(stream, files, tokenizer, vocab):
    """Saved while the cherries are in a later epoch: the continuation is the same stream."""
    examples, _, path = stream
    source, epoch = examples["source"][:CHECKPOINT_AT], examples["epoch"][:CHECKPOINT_AT]
    assert epoch[source == 2].max() >= 2 and (epoch[source < 2] == 0).all()
    restored = iter(_mixed(SPEC.format(*files), tokenizer, vocab)[0])
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    resumed = _collect(restored, 3000)
    assert all(np.array_equal(resumed[key], examples[key][CHECKPOINT_AT:CHECKPOINT_AT + 3000])
               for key in resumed)


def test_a_short_source_repeats_on_its_own(stream, tokenizer):
    examples = {key: value[:CHECKPOINT_AT] for key, value in stream[0].items()}
    lines = np.asarray(_lines(tokenizer, examples))
    source, epoch = examples["source"], examples["epoch"]
    for long in (0, 1):  # apples and bananas: first epoch, no line twice
        assert (epoch[source == long] == 0).all()
        assert len(set(lines[source == long])) == (source == long).sum()
    cherry_epochs = epoch[source == 2]
    assert (np.diff(cherry_epochs) >= 0).all() and cherry_epochs.max() >= 2
    everything = {f"cherry {i}" for i in range(SIZES[2])}
    for e in range(cherry_epochs.max()):  # each whole epoch: every cherry once
        order = lines[(source == 2) & (epoch == e)]
        assert len(order) == SIZES[2] and set(order) == everything


def test_two_hosts_read_disjoint_shares_of_every_source(tmp_path, tokenizer, vocab):
    """Files split between hosts (apples: two files) or batches of one file (bananas, cherries)."""
    apples = [_write_lines(tmp_path / f"apple-{k}.txt", "apple", 1500 * k, 1500 * (k + 1))
              for k in range(2)]
    banana = _write_lines(tmp_path / "banana.txt", "banana", 0, 2500)
    cherry = _write_lines(tmp_path / "cherry.txt", "cherry", 0, 2100)
    spec = f"a={','.join(apples)}:1,b={banana}:1,c={cherry}:1"
    sizes = (3000, 2500, 2100)
    hosts = []
    for host in (0, 1):
        ds = _mixed(spec, tokenizer, vocab, process_index=host, process_count=2)[0]
        seen = {source: [] for source in range(3)}
        done = set()
        for batch in ds:
            lines = tokenizer.batch_decode(batch["input_ids"].numpy(), skip_special_tokens=True)
            for line, source, epoch in zip(lines, batch["source"].numpy(),
                                           batch["epoch"].numpy()):
                if epoch:
                    done.add(source)
                else:
                    seen[source].append(line)
            if len(done) == 3:
                break
        hosts.append(seen)
    for source, (word, size) in enumerate(zip(WORDS, sizes)):
        first, second = hosts[0][source], hosts[1][source]
        assert len(set(first)) == len(first) and len(set(second)) == len(second)
        assert not set(first) & set(second)
        assert set(first) | set(second) == {f"{word} {i}" for i in range(size)}


def _numbers(start, stop, batch):
    return tf.data.Dataset.range(start, stop).batch(batch).map(lambda x: {"value": x})


def _draw(seed=1, host=0, batches=(7, 5)):
    """Sources and values of 2048 examples mixed from two numbered streams."""
    streams = [_numbers(0, 50, batches[0]), _numbers(1000, 1030, batches[1])]
    ds = mixture.mix(streams, [0.5, 0.5], ["x", "y"], seed=seed, process_index=host)
    mixed = [(b["source"].numpy(), b["value"].numpy(), b["epoch"].numpy()) for b in ds.take(8)]
    return [np.concatenate(part) for part in zip(*mixed)]


def test_draws_depend_on_seed_and_host_only():
    source, value, epoch = _draw()
    assert all(np.array_equal(a, b) for a, b in zip(_draw(batches=(3, 11)), (source, value, epoch)))
    assert not np.array_equal(_draw(seed=2)[0], source)
    assert not np.array_equal(_draw(host=1)[0], source)  # each host draws its own sequence
    for index, (start, size) in enumerate(((0, 50), (1000, 30))):  # each stream read in order
        mine = source == index
        np.testing.assert_array_equal(value[mine], start + np.arange(mine.sum()) % size)
        np.testing.assert_array_equal(epoch[mine], np.arange(mine.sum()) // size)


def test_an_empty_source_is_named(files, tokenizer, vocab, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    ds = _mixed(f"a={files[0]}:0.5,empty={blank}:0.5", tokenizer, vocab)[0]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        _collect(iter(ds), 100)
    assert errors.message_in(str(error.value)) == (
        f"source empty ({blank}): no example in an epoch of the share this host reads (the data is "
        "empty, only blank lines, too short for one example, or all held out for validation)")


def test_whole_words_per_source(corpus_file, tokenizer, vocab):
    mixed = [{"name": "words", "train_file": str(corpus_file), "whole_word_masking": True,
              "weight": 1},
             {"name": "tokens", "train_file": str(corpus_file), "weight": 1}]
    config = dataclasses.replace(CONFIG, max_seq_length=64)
    assert mixture.whole_words(config, parse_mixture(mixed))
    assert not mixture.whole_words(config, parse_mixture(mixed[1:]))
    examples = _collect(iter(_mixed(mixed, tokenizer, vocab, config)[0]), 500)
    continued = ~examples["word_starts"]
    assert continued[examples["source"] == 0].any()  # "##" pieces continue their word
    assert not continued[examples["source"] == 1].any()  # each token a word of its own
