"""line_batches on named datasets: a TFDS dataset and Hugging Face datasets built locally."""

import json

import datasets
import pytest
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline import named_datasets, python_calls
from pipeline.sources import line_batches

TRAIN = [f"train line {i} " + "x" * (i % 5) for i in range(300)] + ["", "  "]
VALIDATION = [f"validation line {i}" for i in range(40)]


def read(config, split="train", **kwargs):
    return [t.decode() for b in line_batches(config, split, **kwargs)
            for t in b["text"].numpy()]


def kept(lines):
    return [line for line in lines if line.strip()]


class SourcesTinyText(tfds.core.GeneratorBasedBuilder):
    """A two-config text dataset generated locally; nothing is downloaded."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # tests/ is not a package to find metadata in
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="full"),
                       tfds.core.BuilderConfig(name="train_only")]

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "id": tf.int64}))

    def _split_generators(self, dl_manager):
        splits = {"train": self._generate_examples(TRAIN)}
        if self.builder_config.name == "full":
            splits["validation"] = self._generate_examples(VALIDATION)
        return splits

    def _generate_examples(self, lines):
        for i, line in enumerate(lines):
            yield i, {"text": line, "id": i}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    for name in ("full", "train_only"):
        SourcesTinyText(config=name, data_dir=str(data_dir)).download_and_prepare(
            file_format="tfrecord")
    return data_dir


def test_tfds_splits_and_hosts(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    config = DataConfig(dataset_name="tfds:sources_tiny_text", dataset_config_name="full")
    assert sorted(read(config, read_batch_size=32)) == sorted(kept(TRAIN))
    assert sorted(read(config, "validation")) == sorted(VALIDATION)
    hosts = [read(config, process_index=i, process_count=3, shuffle=True) for i in range(3)]
    assert sorted(sum(hosts, [])) == sorted(kept(TRAIN))


def test_tfds_held_out_and_config_in_name(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    config = DataConfig(dataset_name="tfds:sources_tiny_text/train_only",
                        validation_split_percentage=20)
    train, validation = read(config), read(config, "validation")
    assert sorted(train + validation) == sorted(kept(TRAIN))
    assert validation and not set(train) & set(validation)


def test_tfds_errors(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    with pytest.raises(InputError, match="has no feature 'body'"):
        line_batches(DataConfig(dataset_name="tfds:sources_tiny_text/full",
                                text_column="body"), "train")
    with pytest.raises(InputError, match="not found") as missing:
        line_batches(DataConfig(dataset_name="tfds:no_such_dataset_here"), "train")
    assert str(missing.value) == (f"TFDS dataset 'no_such_dataset_here' not found in "
                                  f"TFDS_DATA_DIR ({tfds_dir}); no similar name there or in the "
                                  "TFDS catalogue")
    with pytest.raises(InputError) as misspelt:
        line_batches(DataConfig(dataset_name="tfds:sources_tiny_txet/full"), "train")
    assert str(misspelt.value) == (f"TFDS dataset 'sources_tiny_txet/full' not found in "
                                   f"TFDS_DATA_DIR ({tfds_dir}); nearest names: sources_tiny_text")


def test_hf_saved_dataset_dict(tmp_path):
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": TRAIN, "n": list(range(len(TRAIN)))}),
        "validation": datasets.Dataset.from_dict({"text": VALIDATION}),
    })
    data.save_to_disk(str(tmp_path / "hf"))
    config = DataConfig(dataset_name=str(tmp_path / "hf"), shuffle_buffer_size=100)
    assert read(config, read_batch_size=64) == kept(TRAIN)
    assert read(config, "validation") == VALIDATION
    shuffled = read(config, shuffle=True, read_batch_size=64)
    assert sorted(shuffled) == sorted(kept(TRAIN)) and shuffled != kept(TRAIN)
    assert read(config, shuffle=True, read_batch_size=64) == shuffled
    hosts = [read(config, process_index=i, process_count=4, read_batch_size=16) for i in range(4)]
    assert sorted(sum(hosts, [])) == sorted(kept(TRAIN))
    with pytest.raises(InputError, match="no text column 'body'"):
        line_batches(DataConfig(dataset_name=str(tmp_path / "hf"), text_column="body"), "train")


def test_hf_saved_dataset_is_held_out_and_checkpointable(tmp_path):
    datasets.Dataset.from_dict({"text": TRAIN}).save_to_disk(str(tmp_path / "hf"))
    config = DataConfig(dataset_name=str(tmp_path / "hf"), validation_split_percentage=20)
    train, validation = read(config), read(config, "validation")
    assert sorted(train + validation) == sorted(kept(TRAIN))
    assert validation and not set(train) & set(validation)
    it = iter(line_batches(config, "train", read_batch_size=16, shuffle=True))
    next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "ckpt"))
    expected = [next(it)["text"].numpy().tolist() for _ in range(2)]
    restored = iter(line_batches(config, "train", read_batch_size=16, shuffle=True))
    tf.train.Checkpoint(iterator=restored).read(path)
    assert [next(restored)["text"].numpy().tolist() for _ in range(2)] == expected


def test_hf_folder_of_data_files_streams(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for split, lines in (("train", TRAIN), ("validation", VALIDATION)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": line}) + "\n" for line in lines)
    config = DataConfig(dataset_name=str(folder))
    assert read(config, read_batch_size=50) == kept(TRAIN)
    assert read(config, "validation") == VALIDATION
    hosts = [read(config, process_index=i, process_count=2, shuffle=True) for i in range(2)]
    assert sorted(sum(hosts, [])) == sorted(kept(TRAIN))


def test_hf_missing_dataset_and_ref_file(tmp_path):
    with pytest.raises(InputError, match="could not be loaded"):
        line_batches(DataConfig(dataset_name=str(tmp_path / "nothing")), "train")
    with pytest.raises(InputError, match="applies to a single .txt file"):
        line_batches(DataConfig(dataset_name=str(tmp_path), train_ref_file="r.ref"), "train")


def write_jsonl_folder(folder, splits):
    folder.mkdir()
    for split, lines in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": line}) + "\n" for line in lines)
    return folder


def texts_of(batches):
    return [[t.decode() for t in batch["text"].numpy()] for batch in batches]


def assert_resumes_exactly(make, whole, stops, tmp_path):
    """Saved after each of `stops` batches, a restored new iterator yields the rest of `whole`."""
    for stop in stops:
        it = make()
        for _ in range(stop):
            next(it)
        path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / f"ckpt{stop}"))
        restored = make()  # a new pipeline, as in a new process: nothing read yet
        tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
        assert texts_of(restored) == whole[stop:], stop


@pytest.mark.parametrize("process_count", [1, 2])
def test_hf_stream_resumes_at_the_exact_batch_in_a_new_pipeline(tmp_path, process_count):
    folder = write_jsonl_folder(tmp_path / "files", {"train": TRAIN})
    config = DataConfig(dataset_name=str(folder), seed=5, validation_split_percentage=0,
                        shuffle_buffer_size=64)
    hosts = []
    for process_index in range(process_count):
        def make():
            return iter(line_batches(config, "train", process_index=process_index,
                                     process_count=process_count, shuffle=True,
                                     read_batch_size=16))
        whole = texts_of(make())
        hosts.append(sum(whole, []))
        assert_resumes_exactly(make, whole, (1, len(whole) // 2, len(whole) - 1), tmp_path)
    # Hosts read disjoint shares that make up the dataset (split_dataset_by_node).
    if process_count == 2:
        assert hosts[0] and hosts[1] and not set(hosts[0]) & set(hosts[1])
    assert sorted(sum(hosts, [])) == sorted(kept(TRAIN))


def test_hf_stream_epochs_each_read_everything_in_a_fresh_order_and_resume(tmp_path):
    """The stream's own epochs (as repeated below the line shuffle), saved at any batch."""
    folder = write_jsonl_folder(tmp_path / "files", {"train": TRAIN})
    config = DataConfig(dataset_name=str(folder), seed=5)
    epochs = 3

    def make():
        source, _ = named_datasets.batches(
            config, "train", process_index=0, process_count=1, shuffle=True, seed=config.seed,
            batch_size=16)
        return iter(python_calls.checkpointable(source.repeat(epochs)))

    whole = texts_of(make())
    size = len(whole) // epochs
    assert size * epochs == len(whole)
    parts = [whole[e * size:(e + 1) * size] for e in range(epochs)]
    assert all(sorted(sum(part, [])) == sorted(TRAIN) for part in parts)
    assert parts[0] != parts[1] != parts[2]  # a fresh shuffle each epoch
    assert_resumes_exactly(make, whole, (2, size - 1, size, size + 3, 2 * size), tmp_path)
