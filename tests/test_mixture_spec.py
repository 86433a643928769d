"""Mixture specs: both forms parse to the same sources; each mistake is one line naming it."""

import json
import math

import pytest

from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline.mixture_spec import Source, parse_mixture, source_config, weights


def test_command_line_form():
    sources = parse_mixture(
        "wiki=data/wiki/*.txt:0.6, books[body]=gs://b/books/a.jsonl,gs://b/books/b.jsonl:0.3,"
        "c4=tfds:c4/en:0.1,hub=hf:org/corpus:2,odd=./date=2024/x.txt,gs://b/date=2025/y.txt:1")
    assert sources == (
        Source("wiki", train_file="data/wiki/*.txt", weight=0.6),
        Source("books", train_file="gs://b/books/a.jsonl,gs://b/books/b.jsonl",
               text_column="body", weight=0.3),
        Source("c4", dataset_name="tfds:c4/en", weight=0.1),
        Source("hub", dataset_name="org/corpus", weight=2.0),
        Source("odd", train_file="./date=2024/x.txt,gs://b/date=2025/y.txt", weight=1.0),
    )
    assert parse_mixture("a=x.txt,b=tfds:c4") == (Source("a", train_file="x.txt"),
                                                 Source("b", dataset_name="tfds:c4"))


def test_json_form_equals_the_command_line_form():
    listed = [{"name": "en", "train_file": "en.txt", "weight": 0.7},
              {"name": "zh", "train_file": "zh.txt", "train_ref_file": "zh.ref",
               "validation_file": "zh-valid.txt", "validation_ref_file": "zh-valid.ref",
               "whole_word_masking": True, "text_column": "body", "weight": 0.3},
              {"name": "hub", "dataset_name": "hf:org/x", "dataset_config_name": "v2",
               "chinese_word_segmentation": "jieba", "weight": 1}]
    sources = parse_mixture(listed)
    assert sources[0] == parse_mixture("en=en.txt:0.7")[0]
    assert sources[1].train_ref_file == "zh.ref" and sources[1].whole_word_masking is True
    assert sources[2].dataset_name == "org/x" and sources[2].dataset_config_name == "v2"
    assert parse_mixture(json.dumps(listed)) == sources  # JSON text on the command line


@pytest.mark.parametrize("value, message", [
    ("", "train_mixture: no sources"),
    ("data/x.txt:0.5", "train_mixture: expected name=SPEC[:weight] at 'data/x.txt:0.5'"),
    ("a=x.txt:0.5,a=y.txt:0.5", "train_mixture: source 'a': name: used twice (again by source 2)"),
    ("wiki en=x.txt", "train_mixture: source 'wiki en': name: expected 1 to 64 letters, digits, "
                      "'_', '-' or '.', starting with a letter or digit (names become "
                      "TensorBoard tags)"),
    ("a=x.txt:0", "train_mixture: source 'a': weight: expected a number > 0, got 0"),
    ("a=x.txt:-1,b=y.txt:1", "train_mixture: source 'a': weight: expected a number > 0, got -1"),
    ("a=x.txt:0.6,b=y.txt", "train_mixture: source 'b': weight: missing, while 'a' has one: "
                            "weight every source, or none (drawn in proportion to size), or "
                            "set mixture_temperature"),
    ("a=x.txt:0.6,y.txt", "train_mixture: source 'a': weight: must follow the source's last "
                          "file, not 'x.txt:0.6'"),
    ("a=:0.5", "train_mixture: source 'a': data: nothing after '='; expected a file spec, "
               "tfds:NAME or hf:NAME"),
    ("a[=x.txt", "train_mixture: expected name or name[column] before '=', got 'a['"),
    ("a=hf:x,y", "train_mixture: source 'a': dataset_name: expected one dataset, got 'x,y'"),
    ([{"name": "a", "train_file": "x", "wieght": 1}],
     "train_mixture: source 'a': wieght: unknown field; did you mean 'weight'?"),
    ([{"name": "a", "train_file": "x", "colour": 1}],
     "train_mixture: source 'a': colour: unknown field; expected one of name, train_file, "
     "dataset_name, dataset_config_name, train_ref_file, validation_file, validation_ref_file, "
     "text_column, chinese_word_segmentation, whole_word_masking, weight"),
    ([{"train_file": "x"}], "train_mixture: source 'item 1': name: missing"),
    ([{"name": "a"}], "train_mixture: source 'a': train_file: expected exactly one of "
                      "train_file and dataset_name"),
    ([{"name": "a", "train_file": "x", "dataset_name": "tfds:y"}],
     "train_mixture: source 'a': train_file: expected exactly one of train_file and "
     "dataset_name"),
    ([{"name": "a", "train_file": "x", "weight": "0.5"}],
     "train_mixture: source 'a': weight: expected a number, got '0.5'"),
    ([{"name": "a", "train_file": "x", "whole_word_masking": "yes"}],
     "train_mixture: source 'a': whole_word_masking: expected true or false, got 'yes'"),
    ([{"name": "a", "train_file": "x", "chinese_word_segmentation": "pkuseg"}],
     "train_mixture: source 'a': chinese_word_segmentation: expected 'jieba', got 'pkuseg'"),
    ([{"name": "a", "dataset_name": "tfds:x", "train_ref_file": "r"}],
     "train_mixture: source 'a': train_ref_file: needs a train_file (a reference file aligns "
     "with a .txt file)"),
    ([{"name": "a", "train_file": "x", "validation_ref_file": "r"}],
     "train_mixture: source 'a': validation_ref_file: needs a validation_file"),
    ([{"name": "a", "train_file": "x", "dataset_config_name": "en"}],
     "train_mixture: source 'a': dataset_config_name: applies to dataset_name, which is not set"),
    ([{"name": "a", "train_file": " "}], "train_mixture: source 'a': train_file: empty"),
    ([{"name": 3, "train_file": "x"}], "train_mixture: source 'item 1': name: expected a "
                                       "string, got 3"),
    (["a=x.txt"], "train_mixture: item 1: expected an object with fields name, train_file, "
                  "dataset_name, dataset_config_name, train_ref_file, validation_file, "
                  "validation_ref_file, text_column, chinese_word_segmentation, "
                  "whole_word_masking, weight, got 'a=x.txt'"),
    ("[{'name': 'a'}]", "train_mixture: not valid JSON (Expecting property name enclosed in "
                        "double quotes: line 1 column 3 (char 2))"),
    (3, "train_mixture: expected 'name=SPEC[:weight],...' or a JSON list of objects, got int"),
])
def test_each_mistake_is_one_line_naming_source_and_field(value, message):
    with pytest.raises(InputError) as error:
        parse_mixture(value)
    assert str(error.value) == message


@pytest.mark.parametrize("value, temperature, message", [
    ("a=x:0.5,b=y:0.5", 2.0, "mixture_temperature: every source of the mixture has a weight, "
                             "so there is nothing to weigh by size; drop the weights or the "
                             "temperature"),
    ("a=x:0.6,b=y:0.4,c=z", 2.0, "train_mixture: source 'b': weight: with mixture_temperature "
                                 "a weight is a fixed share of the mixture; the shares given "
                                 "sum to 1, leaving nothing for c"),
    ("a=x,b=y", 0.0, "mixture_temperature: expected a number > 0, got 0"),
])
def test_temperature_mistakes(value, temperature, message):
    with pytest.raises(InputError) as error:
        parse_mixture(value, temperature=temperature)
    assert str(error.value) == message


def test_weights_recheck_the_temperature_rules():
    sources = parse_mixture("a=x:0.3,b=y,c=z", temperature=2.0)
    with pytest.raises(InputError, match="source 'b': weight: missing, while 'a' has one"):
        weights(sources, [None, (5, "bytes"), (5, "bytes")])  # the temperature left out


def test_the_flag_is_named_in_messages():
    with pytest.raises(InputError, match="^validation_mixture: source 'a': weight"):
        parse_mixture("a=x:0", flag="validation_mixture")


def test_explicit_weights_are_normalised():
    assert weights(parse_mixture("a=x:3,b=y:1")) == [0.75, 0.25]


def test_weights_by_size_and_temperature():
    sources = parse_mixture("a=x,b=y,c=z")
    sizes = [(9000, "bytes"), (900, "bytes"), (100, "bytes")]
    assert weights(sources, sizes) == pytest.approx([0.9, 0.09, 0.01])
    raw = [s ** (1 / 3.3) for s, _ in sizes]  # XLM-R's alpha 0.3
    assert weights(sources, sizes, 3.3) == pytest.approx([r / sum(raw) for r in raw])
    assert weights(sources, sizes, 1e-3) == pytest.approx([1, 0, 0])  # no overflow
    assert weights(sources, sizes, 1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)


def test_fixed_shares_beside_temperature():
    sources = parse_mixture("a=x,b=hf:stream:0.2,c=z", temperature=2.0)
    assert weights(sources, [(400, "lines"), None, (100, "lines")], 2.0) == pytest.approx(
        [0.8 * 2 / 3, 0.2, 0.8 / 3])


@pytest.mark.parametrize("sizes, message", [
    ([(10, "bytes"), None], "source 'b' (hf-data) has no known size (a streamed Hugging Face "
                            "dataset): give it a weight"),
    ([(10, "bytes"), (0, "bytes")], "source 'b' (hf-data) is empty: its size is 0 bytes"),
    ([(10, "bytes"), (4, "lines")], "weights by size need every size in one unit, but they are "
                                    "measured a in bytes, b in lines; pass mixture_sizes_from "
                                    "lines to count lines everywhere, or weight every source"),
])
def test_size_mistakes(sizes, message):
    with pytest.raises(InputError) as error:
        weights(parse_mixture("a=x.txt,b=hf:hf-data"), sizes, 2.0)
    assert str(error.value) == message


def test_source_config_takes_data_from_the_source_and_options_from_the_run():
    run = DataConfig(train_file="run.txt", validation_file="run-valid.txt",
                     train_ref_file="run.ref", text_column="content", whole_word_masking=True,
                     max_seq_length=64, seed=5)
    plain, own = parse_mixture([
        {"name": "a", "dataset_name": "tfds:c4", "weight": 1},
        {"name": "b", "train_file": "b.jsonl", "text_column": "body", "whole_word_masking": False,
         "weight": 1}])
    a, b = source_config(run, plain), source_config(run, own)
    assert (a.dataset_name, a.train_file, a.validation_file, a.train_ref_file) == (
        "tfds:c4", None, None, None)
    assert (a.text_column, a.whole_word_masking, a.max_seq_length, a.seed) == (
        "content", True, 64, 5)
    assert (b.train_file, b.text_column, b.whole_word_masking) == ("b.jsonl", "body", False)
    assert math.isclose(sum(weights((plain, own))), 1)
