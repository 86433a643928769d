"""Batch tokenization inside tf.data: ids without specials and word-start flags."""

import os

import numpy as np
import tensorflow as tf
import tokenizers
import transformers

from pipeline import tokenize

LINES = ["Return the sum of the arguments.", "", "Unbuffered binary streams, e.g. sockets.",
         "x"]


def _word_starts_from_word_ids(encoding):
    """The reference: a token starts a word when its word id differs from the previous one."""
    words = encoding.word_ids
    return [i == 0 or words[i] != words[i - 1] for i in range(len(words))]


def test_vocabulary_reads_specials_and_continuations(tokenizer):
    vocab = tokenize.vocabulary(tokenizer)
    assert vocab.size == 2000
    assert (vocab.cls_id, vocab.sep_id, vocab.pad_id, vocab.mask_id) == (
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
        tokenizer.mask_token_id)
    assert set(np.flatnonzero(vocab.is_special)) == set(tokenizer.all_special_ids)
    expected = [t.startswith("##") for t in tokenizer.convert_ids_to_tokens(range(2000))]
    np.testing.assert_array_equal(vocab.is_continuation, expected)


def test_encode_lines_matches_tokenizer_and_word_ids(tokenizer, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:500] + LINES
    vocab = tokenize.vocabulary(tokenizer)
    ids, lengths, starts = tokenize.encode_lines(
        tokenizer.backend_tokenizer, vocab, np.array([s.encode() for s in lines], object))
    reference = tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False)
    np.testing.assert_array_equal(lengths, [len(e.ids) for e in reference])
    np.testing.assert_array_equal(ids, [i for e in reference for i in e.ids])
    np.testing.assert_array_equal(
        starts, [s for e in reference for s in _word_starts_from_word_ids(e)])


def test_tokenize_dataset_gives_ragged_rows_and_drops_empty_lines(tokenizer):
    vocab = tokenize.vocabulary(tokenizer)
    lines = tf.data.Dataset.from_tensor_slices(LINES).batch(3).map(lambda t: {"text": t})
    batches = list(tokenize.tokenize(lines, tokenizer, vocab))
    rows = [row for b in batches for row in b["ids"].to_list()]
    expected = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in LINES if s]
    assert rows == expected
    assert all(b["ids"].row_lengths().numpy().tolist()
               == b["word_starts"].row_lengths().numpy().tolist() for b in batches)


def test_byte_level_bpe_marks_words_by_leading_space(tmp_path):
    """RoBERTa-style vocabularies: a piece without the 'Ġ' marker continues its word."""
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>")
    vocab = tokenize.vocabulary(tokenizer)
    ids, _, starts = tokenize.encode_lines(tokenizer.backend_tokenizer, vocab,
                                           np.array([b"the quickest foxes"], object))
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert starts.tolist() == [i == 0 or t.startswith("\u0120") for i, t in enumerate(tokens)]
    assert starts.sum() == 3 and len(tokens) > 3
    assert (vocab.cls_id, vocab.sep_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


def test_pipeline_ignores_truncation_left_on_the_shared_tokenizer(tokenizer):
    """transformers leaves truncation/padding set on its backend after such a call."""
    tokenizer(["a b c d e f g h"], truncation=True, max_length=4, padding="max_length")
    vocab = tokenize.vocabulary(tokenizer)
    lines = tf.data.Dataset.from_tensors({"text": ["a b c d e f g h"]})
    batch = next(iter(tokenize.tokenize(lines, tokenizer, vocab)))
    assert batch["ids"].row_lengths().numpy().tolist() == [8]


def test_tokenizer_thread_pool_is_off_unless_the_user_chose(tokenizer, monkeypatch):
    lines = tf.data.Dataset.from_tensors({"text": tf.constant(LINES)})
    vocab = tokenize.vocabulary(tokenizer)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    tokenize.tokenize(lines, tokenizer, vocab)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    tokenize.tokenize(lines, tokenizer, vocab)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
