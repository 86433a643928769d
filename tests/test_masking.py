"""Masking statistics, whole-word units and stateless determinism."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import masking, pack, tokenize
from trainer import args as args_lib

CONFIG = config_lib.DataConfig(max_seq_length=128, line_by_line=True, seed=3)


def _examples(tokenizer, vocab, corpus_file, lines, config):
    text = corpus_file.read_text(encoding="utf-8").splitlines()[:lines]
    ds = tf.data.Dataset.from_tensor_slices(text).batch(256).map(lambda t: {"text": t})
    return pack.pack(tokenize.tokenize(ds, tokenizer, vocab), vocab, config).rebatch(256)


def _masked(examples, vocab, config, whole_words=False):
    mask = masking.masker(vocab, config, whole_words=whole_words)
    out = {}
    for index, batch in examples.enumerate():
        for key, value in {**batch, **mask(index, batch)}.items():
            out.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in out.items()}


@pytest.fixture(scope="module")
def masked(tokenizer, vocab, corpus_file):
    examples = _examples(tokenizer, vocab, corpus_file, 3500, CONFIG)
    before = np.concatenate([b["input_ids"].numpy() for b in examples])
    return before, _masked(examples, vocab, CONFIG)


def test_prediction_count_follows_berts_rule(masked):
    before, out = masked
    real = (out["attention_mask"] == 1).sum(axis=1)
    assert real.sum() >= 100_000
    expected = np.minimum(20, np.maximum(1, np.round(real * 0.15)))
    predicted = (out["labels"] != masking.IGNORE_INDEX).sum(axis=1)
    np.testing.assert_array_equal(predicted, expected)
    assert 0.13 < predicted.sum() / real.sum() < 0.16


def test_predictions_are_never_special_or_padding_and_split_80_10_10(masked, vocab):
    before, out = masked
    chosen = out["labels"] != masking.IGNORE_INDEX
    assert not vocab.is_special[before[chosen]].any()
    np.testing.assert_array_equal(out["labels"][chosen], before[chosen])
    np.testing.assert_array_equal(out["input_ids"][~chosen], before[~chosen])
    shown = out["input_ids"][chosen]
    as_mask = shown == vocab.mask_id
    kept = shown == before[chosen]
    randomized = ~as_mask & ~kept
    assert not vocab.is_special[shown[randomized]].any()
    assert chosen.sum() > 15_000
    assert abs(as_mask.mean() - 0.8) < 0.015
    assert abs(randomized.mean() - 0.1) < 0.01
    assert abs(kept.mean() - 0.1) < 0.01


def test_gather_form_matches_labels(masked):
    _, out = masked
    weights = out["masked_weights"]
    assert weights.dtype == np.float32 and out["masked_positions"].dtype == np.int32
    for row in range(len(weights)):
        positions = np.flatnonzero(out["labels"][row] != masking.IGNORE_INDEX)
        n = len(positions)
        assert weights[row, :n].all() and not weights[row, n:].any()
        assert out["masked_positions"][row, :n].tolist() == positions.tolist()
        assert out["masked_ids"][row, :n].tolist() == out["labels"][row, positions].tolist()
        assert not out["masked_positions"][row, n:].any()
        assert not out["masked_ids"][row, n:].any()
    np.testing.assert_array_equal(out["token_type_ids"], 0)


def test_tokens_are_chosen_uniformly_over_positions(vocab):
    rows, length = 4096, 128
    content = np.flatnonzero(~vocab.is_special)[:1000]
    ids = np.random.default_rng(0).choice(content, size=(rows, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = vocab.cls_id, vocab.sep_id
    ids[0, 3:] = vocab.pad_id  # 2 candidates, a budget of 1
    ids[1, 1:-1] = vocab.sep_id  # no candidate at all
    batch = {"input_ids": tf.constant(ids), "word_starts": tf.ones(ids.shape, tf.bool)}
    mask = masking.masker(vocab, CONFIG, whole_words=False)
    chosen = mask(tf.constant(0, tf.int64), batch)["labels"].numpy() != masking.IGNORE_INDEX
    assert chosen[0].sum() == 1 and chosen[0, 1:3].any()
    assert not chosen[1].any()
    assert (chosen[2:].sum(axis=1) == 19).all()
    per_position = chosen[2:, 1:-1].sum(axis=0)
    expected = (rows - 2) * 19 / 126  # about 617, standard deviation about 23
    assert np.abs(per_position - expected).max() < 5 * np.sqrt(expected)
    assert not chosen[:, [0, -1]].any()


def _word_spans(starts, candidate):
    """(begin, end) of every word: a start and the continuation tokens after it."""
    spans, begin = [], None
    for i, (start, cand) in enumerate(zip(starts, candidate)):
        if begin is not None and (start or not cand):
            spans.append((begin, i))
            begin = None
        if cand and begin is None:
            begin = i
    return spans


def test_whole_word_masking_takes_whole_words(tokenizer, vocab, corpus_file):
    config = dataclasses.replace(CONFIG, line_by_line=False, whole_word_masking=True)
    examples = _examples(tokenizer, vocab, corpus_file, 600, config)
    out = _masked(examples, vocab, config, whole_words=True)
    chosen = out["labels"] != masking.IGNORE_INDEX
    candidate = ~vocab.is_special[np.where(chosen, out["labels"], out["input_ids"])]
    multi_token_words = 0
    for row in range(len(chosen)):
        assert 0 < chosen[row].sum() <= 19
        for begin, end in _word_spans(out["word_starts"][row], candidate[row]):
            assert chosen[row, begin:end].all() or not chosen[row, begin:end].any()
            multi_token_words += end - begin > 1 and chosen[row, begin]
    assert multi_token_words > 50


def test_whole_word_masking_predicts_a_word_larger_than_a_short_rows_budget(vocab):
    """Rows of 4 content tokens have a budget of 1; their words are 2 and 3 tokens long.

    Each such row still gets exactly one whole word, a smallest one; only a
    row whose every word exceeds max_predictions_per_seq gets none.
    """
    config = dataclasses.replace(CONFIG, max_seq_length=8, max_predictions_per_seq=3)
    word = np.flatnonzero(~vocab.is_special & ~vocab.is_continuation)[:4].tolist()
    cls, sep, pad = vocab.cls_id, vocab.sep_id, vocab.pad_id
    ids = tf.constant([[cls, *word[:4], sep, pad, pad],  # words of 2 + 2 tokens
                       [cls, *word[:4], sep, pad, pad],  # words of 1 + 3 tokens
                       [cls, *word[:4], sep, pad, pad],  # one word of 4 > 3 tokens
                       [cls, *word[:4], *word[:2], sep]], tf.int32)  # 3 + 3: budget 1
    t, f = True, False
    starts = tf.constant([[t, t, f, t, f, t, t, t],
                          [t, t, t, f, f, t, t, t],
                          [t, t, f, f, f, t, t, t],
                          [t, t, f, f, t, f, f, t]])
    mask = masking.masker(vocab, config, whole_words=True)
    for index in range(20):  # several random draws
        out = mask(tf.constant(index, tf.int64), {"input_ids": ids, "word_starts": starts})
        chosen = (out["labels"].numpy() != masking.IGNORE_INDEX)
        assert chosen[0].sum() == 2 and (chosen[0, 1:3].all() or chosen[0, 3:5].all())
        assert chosen[1].tolist() == [f, t, f, f, f, f, f, f]  # the 1-token word fits
        assert not chosen[2].any()
        assert chosen[3].sum() == 3 and (chosen[3, 1:4].all() or chosen[3, 4:7].all())
        assert out["masked_weights"].numpy().sum(axis=1).tolist() == [2, 1, 0, 3]


def test_masks_are_stateless_in_the_stream_position(tokenizer, vocab, corpus_file):
    batch = next(iter(_examples(tokenizer, vocab, corpus_file, 300, CONFIG)))
    mask = masking.masker(vocab, CONFIG, whole_words=False)
    first, again, later = (mask(tf.constant(i, tf.int64), batch)["labels"].numpy()
                           for i in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert (first != later).any()
    other_host = masking.masker(vocab, CONFIG, whole_words=False, process_index=1)
    assert (other_host(tf.constant(0, tf.int64), batch)["labels"].numpy() != first).any()


def _prediction_share(tokenizer, vocab, corpus_file, config, sequences):
    """Predicted tokens over real tokens, and the sequences' count, of full packed sequences."""
    text = corpus_file.read_text(encoding="utf-8").splitlines()
    ds = tf.data.Dataset.from_tensor_slices(text).repeat().batch(256).map(lambda t: {"text": t})
    examples = pack.pack(tokenize.tokenize(ds, tokenizer, vocab), vocab, config).rebatch(250)
    out = _masked(examples.take(sequences // 250), vocab, config)
    real = out["attention_mask"].sum(axis=1)
    assert (real == config.max_seq_length).all()  # packed: every sequence is full
    return out["masked_weights"].sum() / real.sum(), len(real)


def test_length_512_with_default_flags_predicts_15_percent(tokenizer, vocab, corpus_file):
    """run_mlm_flax.py's command at --max_seq_length 512: its 15%, not a cap of 20 (3.9%)."""
    _, data_args, training_args = args_lib.parse_args(
        ["--max_seq_length", "512", "--output_dir", "unused"])
    config = dataclasses.replace(args_lib.data_config(data_args, training_args), seed=3)
    assert config.max_predictions_per_seq == 77 and config.masking_cap_note() is None
    share, sequences = _prediction_share(tokenizer, vocab, corpus_file, config, 1000)
    assert sequences == 1000 and abs(share - 0.15) <= 0.01

    capped = dataclasses.replace(config, max_predictions_per_seq=20)
    assert "20 predicted tokens (3.9%), not the 77 (15%)" in capped.masking_cap_note()
    share, _ = _prediction_share(tokenizer, vocab, corpus_file, capped, 250)
    assert share == pytest.approx(20 / 512)


@pytest.mark.parametrize("whole_words", [False, True])
def test_length_128_default_masks_exactly_as_before(tokenizer, vocab, corpus_file, whole_words):
    """The default at 128 is the old fixed default, 20: the same positions for the same seed."""
    default = dataclasses.replace(CONFIG, line_by_line=False, max_predictions_per_seq=None)
    assert default.max_predictions_per_seq == 20 and default.masking_cap_note() is None
    old = dataclasses.replace(default, max_predictions_per_seq=20)
    examples = _examples(tokenizer, vocab, corpus_file, 600, default)
    new_masks = _masked(examples, vocab, default, whole_words)
    old_masks = _masked(examples, vocab, old, whole_words)
    for key in ("input_ids", "labels", "masked_positions", "masked_weights"):
        np.testing.assert_array_equal(new_masks[key], old_masks[key])
