"""Chinese whole-word masking: ref files, on-the-fly jieba, and ref errors."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tokenizers import models, normalizers, pre_tokenizers, processors
import tokenizers
import transformers

from pipeline import chinese_ref, inputs, tokenize
from pipeline import config as config_lib
from pipeline.errors import InputError
from pipeline.refs import RefSource

CHINESE_LINES = ["我喜欢你", "我们在北京大学学习中文。", "今天天气很好, we like it",
                 "人工智能改变了世界", "他喜欢吃苹果和香蕉"]


@pytest.fixture(scope="module")
def zh_tokenizer_dir(tmp_path_factory):
    """A tiny BERT-Chinese-like tokenizer: every CJK character a token, split singly."""
    chars = sorted({c for line in CHINESE_LINES for c in line if chinese_ref.has_chinese(c)})
    words = ["we", "like", "it", ",", "。", "[UNK]"]
    vocab = {t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + words[:-1])}
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.BertTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]")
    assert len(tokenizer) == len(vocab)
    path = tmp_path_factory.mktemp("zh_tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zh_tokenizer(zh_tokenizer_dir):
    return inputs.load_tokenizer(zh_tokenizer_dir)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_continuations_take_the_longest_chinese_word():
    tokens = ["我", "喜", "欢", "北", "京", "大", "学", "x"]
    assert chinese_ref.continuations(tokens, ["我", "喜欢", "北京", "北京大学", "x"]) == [
        2, 4, 5, 6]
    assert chinese_ref.continuations(tokens, ["x"]) == []


def test_xi_huan_is_always_masked_together(tmp_path, zh_tokenizer):
    assert zh_tokenizer("我喜欢你").tokens() == ["[CLS]", "我", "喜", "欢", "你", "[SEP]"]
    text = _write(tmp_path / "zh.txt", ["我喜欢你"] * 64)
    ref = _write(tmp_path / "zh.ref", ["[3]"] * 64)
    xi, huan = zh_tokenizer.convert_tokens_to_ids(["喜", "欢"])
    for line_by_line in (True, False):
        config = config_lib.DataConfig(
            train_file=text, train_ref_file=ref, max_seq_length=16, line_by_line=line_by_line,
            mlm_probability=0.5, validation_split_percentage=0)
        ds = inputs.train_dataset(config, zh_tokenizer, per_device_batch_size=32,
                                  local_device_count=2)
        together = 0  # (a block boundary may split the word when packing)
        for batch in ds.take(3):
            labels = batch["labels"].numpy().reshape(-1, 16)
            originals = np.where(labels != -100, labels, batch["input_ids"].numpy().reshape(
                -1, 16))
            for row, label in zip(originals, labels):
                for i in np.flatnonzero((row[:-1] == xi) & (row[1:] == huan)):
                    assert (label[i] == -100) == (label[i + 1] == -100)
                    together += label[i] != -100
        assert together > 10


def test_cli_writes_run_chinese_ref_format_in_parallel(tmp_path, zh_tokenizer_dir, zh_tokenizer):
    text = _write(tmp_path / "zh.txt", CHINESE_LINES[:3] + ["", "  "] + CHINESE_LINES[3:])
    out = tmp_path / "zh.ref"
    chinese_ref.main(["--input", text, "--tokenizer", str(zh_tokenizer_dir),
                      "--output", str(out), "--workers", "2"])
    refs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert refs == chinese_ref.line_refs(zh_tokenizer, CHINESE_LINES)
    assert refs[0] == [3]  # 我 喜欢 你
    tokens = zh_tokenizer(CHINESE_LINES[1]).tokens()
    assert all(len(tokens[i]) == 1 for r in refs for i in r) and refs[1]
    assert out.read_text(encoding="utf-8").splitlines()[0] == "[3]"


def _word_starts(tokenizer, config):
    ds = tf.data.Dataset.from_tensor_slices(CHINESE_LINES).batch(8)
    if config.get("refs"):
        refs = [json.dumps(r) for r in config["refs"]]
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(refs).batch(8)).map(
            lambda t, r: {"text": t, "chinese_ref": r,
                          "ref_lines": tf.zeros([tf.size(t), 2], tf.int64)})
    else:
        ds = ds.map(lambda t: {"text": t})
    vocab = tokenize.vocabulary(tokenizer)
    out = tokenize.tokenize(ds, tokenizer, vocab, segmentation=config.get("segmentation"),
                            ref_source=RefSource("zh.txt", "zh.ref"))
    return next(iter(out))["word_starts"].to_list()


def test_on_the_fly_jieba_matches_the_ref_file(zh_tokenizer):
    refs = chinese_ref.line_refs(zh_tokenizer, CHINESE_LINES)
    from_refs = _word_starts(zh_tokenizer, {"refs": refs})
    assert from_refs == _word_starts(zh_tokenizer, {"segmentation": "jieba"})
    assert from_refs != _word_starts(zh_tokenizer, {})
    assert from_refs[0] == [True, True, False, True]


def test_ref_index_past_the_line_names_both_files_and_the_line(tmp_path, zh_tokenizer):
    vocab = tokenize.vocabulary(zh_tokenizer)
    source = RefSource("corpus/zh.txt", "corpus/zh.ref")
    message = (r"reference file corpus/zh\.ref does not match text file corpus/zh\.txt: ref "
               r"line 6: reference index 5 .* of text line 8: '我喜欢你'")
    with pytest.raises(InputError, match=message):
        tokenize.encode_lines(zh_tokenizer.backend_tokenizer, vocab,
                              np.array(["我喜欢你".encode()], object), np.array([b"[2, 5]"]),
                              np.array([[8, 6]]), ref_source=source)
    text = _write(tmp_path / "zh.txt", CHINESE_LINES)
    ref = _write(tmp_path / "zh.ref", ["[]", "[9]", "[]", "[]", "[40]"])
    config = config_lib.DataConfig(train_file=text, train_ref_file=ref, line_by_line=True,
                                   validation_split_percentage=0, max_seq_length=32)
    ds = inputs.train_dataset(config, zh_tokenizer, per_device_batch_size=2, local_device_count=1)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"zh\.txt: ref line 5: reference index 40 .* of text line 5:"):
        next(iter(ds))


@pytest.mark.parametrize("refs", [
    ["[]"] * 4,  # one line short
    ["[]", "[2", "[]", "[]", "[]"],  # not JSON
    ["[]", "[1.5]", "[]", "[]", "[]"],  # not a list of integers
])
def test_misaligned_or_malformed_ref_files_raise_input_error(tmp_path, zh_tokenizer, refs):
    text = _write(tmp_path / "zh.txt", CHINESE_LINES)
    ref = _write(tmp_path / "zh.ref", refs)
    config = config_lib.DataConfig(train_file=text, train_ref_file=ref)
    with pytest.raises(InputError, match=r"zh\.ref.*zh\.txt.*line"):
        next(iter(inputs.train_dataset(config, zh_tokenizer, per_device_batch_size=2,
                                       local_device_count=1)))
