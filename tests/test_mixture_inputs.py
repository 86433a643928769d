"""A mixture through the trainer's datasets: tags, per-source validation on uneven hosts, refs."""

import dataclasses
import json

import numpy as np
import pytest

from pipeline import inputs, mixture, sources
from pipeline.config import DataConfig
from pipeline.errors import InputError

from test_chinese_ref import zh_tokenizer, zh_tokenizer_dir  # noqa: F401  (fixtures)

CONFIG = DataConfig(line_by_line=True, max_seq_length=16, max_predictions_per_seq=4,
                    shuffle_buffer_size=100, seed=5)
HOSTS = 3
EVAL_BATCH = 2  # per device, on 2 devices per host


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def _numbered(directory, word, count):
    return _write(directory / f"{word}.txt", [f"{word} {i}" for i in range(count)])


def _spec(**files):
    return ",".join(f"{name}={path}" for name, path in files.items())


def test_training_batches_carry_each_example_source_and_epoch(tmp_path, tokenizer):
    spec = f"a={_numbered(tmp_path, 'apple', 300)}:0.7,b={_numbered(tmp_path, 'banana', 7)}:0.3"
    config = dataclasses.replace(CONFIG, train_mixture=spec, validation_split_percentage=0)
    batches = list(inputs.train_dataset(config, tokenizer, per_device_batch_size=8,
                                        local_device_count=2).take(20))
    for batch in batches:
        assert batch["source"].shape == batch["epoch"].shape == (16,)
        assert batch["input_ids"].shape == (16, 16)
    source = np.concatenate([b["source"].numpy() for b in batches])
    epoch = np.concatenate([b["epoch"].numpy() for b in batches])
    words = np.array([line.split()[0] for batch in batches for line in tokenizer.batch_decode(
        _originals(batch), skip_special_tokens=True)])
    assert (words == np.array(["apple", "banana"])[source]).all()
    np.testing.assert_array_equal(epoch[source == 1], np.arange((source == 1).sum()) // 7)
    assert (epoch[source == 0] == 0).all() and epoch.max() >= 2  # bananas repeat on their own


def _originals(batch):
    labels, ids = batch["labels"].numpy(), batch["input_ids"].numpy()
    return np.where(labels >= 0, labels, ids)


def _evaluated_lines(part, tokenizer):
    """Every host's weight-1 validation examples of one set, decoded, and its batch counts."""
    host = dict(per_device_batch_size=EVAL_BATCH, local_device_count=2, process_count=HOSTS)
    counts = [inputs.count_eval_batches(part.config, tokenizer, process_index=i, **host)
              for i in range(HOSTS)]
    seen, batches = [], []
    for index in range(HOSTS):
        ds = list(inputs.eval_dataset(part.config, tokenizer, process_index=index,
                                      num_batches=max(counts), **host))
        batches.append(len(ds))
        for batch in ds:
            real = batch["attention_mask"].numpy().any(axis=1)
            assert (batch["masked_weights"].numpy()[~real] == 0).all()
            seen += tokenizer.batch_decode(_originals(batch)[real], skip_special_tokens=True)
    return seen, counts, batches


@pytest.mark.slow
def test_every_validation_example_of_each_source_counts_once_on_uneven_hosts(tmp_path,
                                                                             tokenizer):
    files = {name: _numbered(tmp_path, word, count)
             for name, word, count in (("a", "apple", 37), ("b", "banana", 5),
                                       ("c", "cherry", 1))}
    config = dataclasses.replace(CONFIG, validation_mixture=_spec(**files))
    sets = mixture.validation_sets(config)
    assert [s.name for s in sets] == ["a", "b", "c"]
    assert [s.weight for s in sets] == pytest.approx([1 / 3] * 3)  # no train_mixture: equal
    for part, (word, count) in zip(sets, (("apple", 37), ("banana", 5), ("cherry", 1))):
        seen, counts, batches = _evaluated_lines(part, tokenizer)
        assert sorted(seen) == sorted(f"{word} {i}" for i in range(count))
        assert len(set(batches)) == 1 and batches[0] == max(counts)
        if count > 1:
            assert len(set(counts)) > 1, "hosts should be uneven"


@pytest.mark.slow
def test_held_out_validation_of_each_training_source_counts_once(tmp_path, tokenizer):
    spec = _spec(a=_numbered(tmp_path, "apple", 400), b=_numbered(tmp_path, "banana", 90))
    config, weights = mixture.with_resolved_weights(
        dataclasses.replace(CONFIG, train_mixture=spec, validation_split_percentage=10))
    sets = mixture.validation_sets(config, weights)
    assert [s.weight for s in sets] == pytest.approx(list(weights.values()))
    for part in sets:
        expected = [line.decode() for batch in sources.line_batches(part.config, "validation")
                    for line in batch["text"].numpy()]
        assert 0 < len(expected) < 60
        seen, _, _ = _evaluated_lines(part, tokenizer)
        assert sorted(seen) == sorted(expected)
        training = [line.decode() for batch in sources.line_batches(part.config, "train")
                    for line in batch["text"].numpy()]
        assert not set(training) & set(expected)


def test_validation_weights_come_from_its_sources_or_the_training_mixture(tmp_path):
    files = {name: _numbered(tmp_path, name, 10) for name in ("x", "y")}
    config = dataclasses.replace(CONFIG, train_mixture=f"x={files['x']}:3,y={files['y']}:1",
                                 validation_mixture=_spec(**files))
    config, weights = mixture.with_resolved_weights(config)
    assert [s.weight for s in mixture.validation_sets(config, weights)] == pytest.approx(
        [0.75, 0.25])
    weighted = dataclasses.replace(config, validation_mixture=f"y={files['y']}:1,x={files['x']}:1")
    assert [s.weight for s in mixture.validation_sets(weighted, weights)] == [0.5, 0.5]
    other = dataclasses.replace(config, validation_mixture=f"z={files['y']}")
    with pytest.raises(InputError, match="validation_mixture: source 'z': weight: missing, and "
                                         "the train_mixture has no source of that name"):
        mixture.validation_sets(other, weights)
    # The training sources read everything: a validation_mixture replaces the held-out part.
    train_part = mixture.training_sources(config)[0]
    assert train_part.validation_split_percentage == 0


def test_temperature_weights_are_resolved_once_into_the_config(tmp_path):
    files = {name: _numbered(tmp_path, name, count) for name, count in (("x", 900), ("y", 100))}
    config = dataclasses.replace(CONFIG, train_mixture=_spec(**files), mixture_temperature=2.0)
    resolved, weights = mixture.with_resolved_weights(config)
    sizes = np.sqrt([len(open(files[n], "rb").read()) for n in ("x", "y")])
    assert list(weights.values()) == pytest.approx(sizes / sizes.sum())
    assert resolved.mixture_temperature is None
    assert [s["weight"] for s in json.loads(resolved.train_mixture)] == list(weights.values())
    assert mixture.with_resolved_weights(resolved)[1] == pytest.approx(weights)


def test_each_source_has_its_own_reference_file(tmp_path, zh_tokenizer):  # noqa: F811
    """English without refs, Chinese with them: 喜欢 is masked as one word in every example."""
    english = _write(tmp_path / "en.txt", ["we like it"] * 64)
    chinese = _write(tmp_path / "zh.txt", ["我喜欢你"] * 64)
    ref = _write(tmp_path / "zh.ref", ["[3]"] * 64)
    mixed = json.dumps([{"name": "en", "train_file": english, "weight": 1},
                        {"name": "zh", "train_file": chinese, "train_ref_file": ref,
                         "weight": 1}])
    config = dataclasses.replace(CONFIG, train_mixture=mixed, mlm_probability=0.5,
                                 validation_split_percentage=0)
    xi, huan = zh_tokenizer.convert_tokens_to_ids(["喜", "欢"])
    together = english_rows = 0
    for batch in inputs.train_dataset(config, zh_tokenizer, per_device_batch_size=16,
                                      local_device_count=2).take(4):
        labels, originals = batch["labels"].numpy(), _originals(batch)
        for row, label, source in zip(originals, labels, batch["source"].numpy()):
            if source == 0:
                english_rows += 1
                assert (label != -100).sum() == 2  # round(0.5 * 3 tokens), one-token words
                continue
            (i,) = np.flatnonzero((row[:-1] == xi) & (row[1:] == huan))
            assert (label[i] == -100) == (label[i + 1] == -100)
            together += label[i] != -100
    assert english_rows > 10 and together > 10
