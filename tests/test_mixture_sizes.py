"""Source sizes for weights by size: bytes without a pass, or counted lines, per kind of source."""

import gzip
import json

import datasets
import pytest
import tensorflow_datasets as tfds
from etils import epath

from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline.mixture_sizes import source_size
from pipeline.mixture_spec import parse_mixture, weights

LINES = [f"line {i} " + "y" * (i % 7) for i in range(120)]


class WeighedCorpus(tfds.core.GeneratorBasedBuilder):
    """A text dataset generated locally; nothing is downloaded."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, line in enumerate(LINES):
            yield i, {"text": line}


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_files_in_stored_bytes_or_counted_lines(tmp_path):
    plain = _write(tmp_path / "a.txt", LINES[:50] + ["", "  "])
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps({"body": line}) + "\n" for line in LINES[50:]),
                     encoding="utf-8")
    both = DataConfig(train_file=f"{plain},{other}", text_column="body")
    text = DataConfig(train_file=str(plain))
    assert source_size(text) == (plain.stat().st_size, "bytes")
    assert source_size(text, "lines") == (50, "lines")  # blank lines are no text
    held_out = DataConfig(train_file=str(other), text_column="body",
                          validation_split_percentage=50)
    assert source_size(held_out, "lines") == (70, "lines")  # what is held out counts too
    assert source_size(DataConfig(train_file=str(other), text_column="body"))[0] == (
        other.stat().st_size)
    with pytest.raises(InputError, match="mix formats"):
        source_size(both, "lines")


def test_gzip_bytes_are_a_unit_of_their_own(tmp_path):
    packed = tmp_path / "a.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in LINES))
    plain = _write(tmp_path / "b.txt", LINES)
    assert source_size(DataConfig(train_file=str(packed))) == (packed.stat().st_size,
                                                               "gzip bytes")
    assert source_size(DataConfig(train_file=str(packed)), "lines") == (120, "lines")
    with pytest.raises(InputError, match="compressed and plain files in one source"):
        source_size(DataConfig(train_file=f"{packed},{plain}"))
    sources = parse_mixture(f"a={packed},b={plain}")
    sizes = [source_size(DataConfig(train_file=s.train_file)) for s in sources]
    with pytest.raises(InputError, match="a in gzip bytes, b in bytes; pass mixture_sizes_from"):
        weights(sources, sizes)


def test_tfds_sizes_come_from_its_info(tmp_path, monkeypatch):
    WeighedCorpus(data_dir=str(tmp_path)).download_and_prepare(file_format="tfrecord")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    config = DataConfig(dataset_name="tfds:weighed_corpus")
    stored = sum(f.stat().st_size for f in tmp_path.glob("weighed_corpus/*/*.tfrecord*"))
    text_bytes = sum(len(line.encode()) for line in LINES)
    size, unit = source_size(config)
    assert unit == "bytes" and text_bytes < size <= stored
    assert source_size(config, "lines") == (120, "lines")


def test_hugging_face_sizes(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": LINES, "id": list(range(120))}).save_to_disk(str(saved))
    config = DataConfig(dataset_name=str(saved))
    text_bytes = sum(len(line.encode()) for line in LINES)
    size, unit = source_size(config)
    assert unit == "bytes" and text_bytes <= size <= text_bytes + 8 * 121  # plus offsets
    assert source_size(config, "lines") == (120, "lines")
    folder = tmp_path / "files"
    folder.mkdir()
    _write(folder / "train.txt", LINES)
    assert source_size(DataConfig(dataset_name=str(folder))) is None  # streamed


def test_sizes_from_is_checked(tmp_path):
    with pytest.raises(InputError, match="mixture_sizes_from: expected one of bytes, lines, "
                                         "got 'rows'"):
        source_size(DataConfig(train_file=str(_write(tmp_path / "a.txt", LINES))), "rows")


def test_a_counted_pass_reads_every_host_share(tmp_path):
    """Sizes describe the whole source: the same on every host, whatever it reads."""
    files = [_write(tmp_path / f"{k}.txt", LINES[k::3]) for k in range(3)]
    config = DataConfig(train_file=",".join(map(str, files)))
    assert source_size(config, "lines") == (120, "lines")
    assert source_size(config)[0] == sum(f.stat().st_size for f in files)
