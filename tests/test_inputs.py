"""The trainer-facing datasets: shapes, determinism, checkpointing and complete evaluation."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import inputs
from pipeline.errors import InputError

D, B, L, P = 2, 4, 64, 10


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus_file):
    path = tmp_path_factory.mktemp("small") / "small.txt"
    path.write_text("\n".join(corpus_file.read_text(encoding="utf-8").splitlines()[:2000]) + "\n",
                    encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def config(small_corpus):
    return config_lib.DataConfig(train_file=small_corpus, max_seq_length=L,
                                 max_predictions_per_seq=P, shuffle_buffer_size=1000, seed=7)


def _numpy(batches):
    return [{key: value.numpy() for key, value in batch.items()} for batch in batches]


def _equal(left, right):
    return len(left) == len(right) and all(
        a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        for a, b in zip(left, right))


def _train(config, tokenizer, **kwargs):
    return inputs.train_dataset(config, tokenizer, per_device_batch_size=B, local_device_count=D,
                                **kwargs)


def test_train_elements_follow_the_contract(config, tokenizer):
    batch = _numpy(_train(config, tokenizer).take(1))[0]
    expected = {"input_ids": L, "attention_mask": L, "token_type_ids": L, "labels": L,
                "masked_positions": P, "masked_ids": P, "masked_weights": P}
    # Host batches: the feed, not the pipeline, splits them over devices.
    assert {k: v.shape for k, v in batch.items()} == {k: (D * B, w) for k, w in expected.items()}
    assert all(v.dtype == (np.float32 if k == "masked_weights" else np.int32)
               for k, v in batch.items())
    spec = _train(config, tokenizer).element_spec
    assert all(s.shape == (D * B, expected[k]) for k, s in spec.items())


def test_training_is_deterministic_for_a_seed(config, tokenizer):
    first = _numpy(_train(config, tokenizer).take(3))
    assert _equal(first, _numpy(_train(config, tokenizer).take(3)))
    other = _numpy(_train(dataclasses.replace(config, seed=8), tokenizer).take(3))
    assert not _equal(first, other)


def test_restored_iterator_yields_the_same_batches(config, tokenizer, tmp_path):
    iterator = iter(_train(config, tokenizer))
    _numpy([next(iterator) for _ in range(2)])
    path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "data"))
    expected = _numpy([next(iterator) for _ in range(3)])
    restored = iter(_train(config, tokenizer))
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    assert _equal(_numpy([next(restored) for _ in range(3)]), expected)


def test_each_epoch_gets_fresh_masks(tmp_path, tokenizer):
    text = tmp_path / "one.txt"
    text.write_text("the same line of text is read in every epoch again\n" * 8, encoding="utf-8")
    config = config_lib.DataConfig(train_file=str(text), line_by_line=True, max_seq_length=16,
                                   max_predictions_per_seq=4, validation_split_percentage=0)
    batches = _numpy(inputs.train_dataset(config, tokenizer, per_device_batch_size=8,
                                          local_device_count=1, num_epochs=2))
    assert len(batches) == 2
    originals = [np.where(b["labels"] >= 0, b["labels"], b["input_ids"]) for b in batches]
    np.testing.assert_array_equal(originals[0], originals[1])
    assert not np.array_equal(batches[0]["labels"], batches[1]["labels"])


def _eval_config(tmp_path, lines, **changes):
    text = tmp_path / "validation.txt"
    text.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return config_lib.DataConfig(train_file=str(text), validation_file=str(text),
                                 max_seq_length=L, max_predictions_per_seq=P, **changes)


def _eval(config, tokenizer, **kwargs):
    return _numpy(inputs.eval_dataset(config, tokenizer, per_device_batch_size=B,
                                      local_device_count=D, **kwargs))


def _real_rows(batches):
    """The unmasked ids of each real (attention-bearing) example, flattened over devices."""
    rows = []
    for batch in batches:
        ids = np.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"]).reshape(-1, L)
        rows += [row for row, mask in zip(ids, batch["attention_mask"].reshape(-1, L))
                 if mask.any()]
    return rows


def test_eval_counts_every_example_once_with_fixed_masks(tmp_path, tokenizer, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:37]
    config = _eval_config(tmp_path, lines, line_by_line=True)
    batches = _eval(config, tokenizer)
    assert len(batches) == 5 == inputs.count_eval_batches(
        config, tokenizer, per_device_batch_size=B, local_device_count=D)
    expected = [tokenizer(s, truncation=True, max_length=L, padding="max_length")["input_ids"]
                for s in lines]
    assert [r.tolist() for r in _real_rows(batches)] == expected
    last = batches[-1]
    padding = last["attention_mask"].reshape(-1, L).sum(axis=1) == 0
    assert padding.sum() == 3
    assert (last["labels"].reshape(-1, L)[padding] == -100).all()
    assert not last["masked_weights"].reshape(-1, P)[padding].any()
    assert _equal(batches, _eval(config, tokenizer))


def test_eval_packing_keeps_the_final_partial_block(tmp_path, tokenizer, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:50]
    batches = _eval(_eval_config(tmp_path, lines), tokenizer)
    content = [t for row in _real_rows(batches)
               for t in row[1:][row[1:] != tokenizer.pad_token_id][:-1]]
    stream = [t for s in lines
              for t in tokenizer(s, add_special_tokens=False)["input_ids"] + [
                  tokenizer.sep_token_id]]
    assert content == stream


def test_eval_pads_to_num_batches_and_caps_samples(tmp_path, tokenizer, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:37]
    config = _eval_config(tmp_path, lines, line_by_line=True)
    batches = _eval(config, tokenizer, num_batches=7)
    assert len(batches) == 7
    assert all(not b["attention_mask"].any() and not b["masked_weights"].any()
               for b in batches[5:])
    capped = dataclasses.replace(config, max_eval_samples=11)
    assert len(_real_rows(_eval(capped, tokenizer))) == 11
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, part in zip(files, (lines[:20], lines[20:])):
        path.write_text("".join(line + "\n" for line in part), encoding="utf-8")
    two_files = dataclasses.replace(capped, validation_file=",".join(map(str, files)))
    hosts = [inputs.count_eval_batches(two_files, tokenizer, per_device_batch_size=1,
                                       local_device_count=1, process_index=i, process_count=2)
             for i in range(2)]
    assert hosts == [6, 5]  # the cap is split over the hosts


def test_load_tokenizer_rejects_a_directory_without_one(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        inputs.load_tokenizer(tmp_path)


def test_a_script_exits_with_a_live_iterator(config, tokenizer_dir):
    """A tf.data thread caught inside the tokenizer at interpreter exit used to hang it."""
    script = (
        "from pipeline import config, inputs\n"
        f"c = config.DataConfig(train_file={config.train_file!r}, max_seq_length=64)\n"
        f"t = inputs.load_tokenizer({str(tokenizer_dir)!r})\n"
        "it = iter(inputs.train_dataset(c, t, per_device_batch_size=8, local_device_count=1))\n"
        "next(it)\n")
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
