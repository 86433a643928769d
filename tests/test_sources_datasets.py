"""line_batches on named datasets: a TFDS dataset and Hugging Face datasets built locally."""

import json

import datasets
import pytest
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.config import DataConfig
from pipeline.errors import InputError
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
