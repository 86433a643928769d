"""DataConfig: each data setting checked once, where it is defined, for every way it is made."""

import dataclasses
import sys

import pytest

from pipeline.config import DataConfig
from pipeline.errors import InputError
from trainer.args import parse_args

# (field, a bad value, the message), one per rule of DataConfig.__post_init__.
BAD_SETTINGS = [
    ("max_seq_length", 0, "max_seq_length must be > 0, got 0"),
    ("max_predictions_per_seq", -1, "max_predictions_per_seq must be > 0, got -1"),
    ("shuffle_buffer_size", 0, "shuffle_buffer_size must be > 0, got 0"),
    ("read_block_bytes", 0, "read_block_bytes must be > 0, got 0"),
    ("blocks_mixed", 0, "blocks_mixed must be > 0, got 0"),
    ("max_eval_samples", 0, "max_eval_samples must be > 0, got 0"),
    ("mlm_probability", 1.5, "mlm_probability must be in [0, 1], got 1.5"),
    ("random_replace_prob", -0.5, "random_replace_prob must be in [0, 1], got -0.5"),
    ("mask_replace_prob", 0.95, "mask_replace_prob + random_replace_prob must be <= 1, got "
                                "0.95 + 0.1"),
    ("validation_split_percentage", 100, "validation_split_percentage must be in [0, 100), "
                                         "got 100"),
    ("validation_split_percentage", -1, "validation_split_percentage must be in [0, 100), "
                                        "got -1"),
    ("invalid_utf8", "ignore", "invalid_utf8 must be one of error, replace; got 'ignore'"),
    ("mixture_sizes_from", "words", "mixture_sizes_from must be one of bytes, lines; got "
                                    "'words'"),
]


@pytest.mark.parametrize("name, value, message", BAD_SETTINGS)
def test_a_bad_setting_is_refused_with_the_same_line_however_the_config_is_made(
        name, value, message, capsys, monkeypatch):
    with pytest.raises(InputError) as made:
        DataConfig(**{name: value})
    assert str(made.value) == message
    with pytest.raises(InputError) as replaced:  # a derived config is checked too
        dataclasses.replace(DataConfig(train_file="a.txt"), **{name: value})
    assert str(replaced.value) == message
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "o", f"--{name}", str(value)])
    assert capsys.readouterr().err == f"train.py: error: {message} (see --help)\n"


def test_unknown_segmenter_is_rejected():
    with pytest.raises(InputError, match="chinese_word_segmentation.*jieba.*ltp"):
        DataConfig(chinese_word_segmentation="ltp")


def test_every_setting_has_its_help_and_the_defaults_pass_their_checks():
    for f in dataclasses.fields(DataConfig):
        assert f.metadata["help"].strip(), f.name
    assert DataConfig(validation_split_percentage=99, mlm_probability=1.0,
                      mask_replace_prob=0.5, random_replace_prob=0.5,
                      chinese_word_segmentation="jieba", invalid_utf8="replace")
