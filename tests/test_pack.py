"""Line-by-line framing and concatenate-and-chunk packing of tokenized batches."""

import numpy as np
import tensorflow as tf

from pipeline import pack, tokenize


def _tokenized(tokenizer, vocab, lines, batch_size):
    ds = tf.data.Dataset.from_tensor_slices(lines).batch(batch_size)
    return tokenize.tokenize(ds.map(lambda t: {"text": t}), tokenizer, vocab)


def _line_ids(tokenizer, lines):
    return [tokenizer(s, add_special_tokens=False)["input_ids"] for s in lines]


def test_line_by_line_truncates_frames_and_pads(tokenizer, vocab, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:300]
    examples = list(pack.line_by_line(_tokenized(tokenizer, vocab, lines, 64), vocab, 32))
    ids = np.concatenate([e["input_ids"].numpy() for e in examples])
    assert ids.shape == (300, 32) and ids.dtype == np.int32
    for row, line in zip(ids, _line_ids(tokenizer, lines)):
        expected = [vocab.cls_id] + line[:30] + [vocab.sep_id]
        expected += [vocab.pad_id] * (32 - len(expected))
        assert row.tolist() == expected


def test_packing_conserves_tokens_across_batches(tokenizer, vocab, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:700]
    length = 64
    examples = list(pack.packed(_tokenized(tokenizer, vocab, lines, 37), vocab, length))
    ids = np.concatenate([e["input_ids"].numpy() for e in examples])
    assert ids.shape[1] == length
    assert (ids[:, 0] == vocab.cls_id).all() and (ids[:, -1] == vocab.sep_id).all()
    stream = [t for line in _line_ids(tokenizer, lines) for t in line + [vocab.sep_id]]
    content = ids[:, 1:-1].reshape(-1).tolist()
    # Every token arrives, in order; only the final partial block is left out.
    assert len(stream) - len(content) < length - 2
    assert content == stream[:len(content)]


def test_packing_carries_word_starts(tokenizer, vocab, corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()[:200]
    examples = list(pack.packed(_tokenized(tokenizer, vocab, lines, 50), vocab, 48))
    ids = np.concatenate([e["input_ids"].numpy() for e in examples])
    starts = np.concatenate([e["word_starts"].numpy() for e in examples])
    assert starts.dtype == bool
    tokens = np.array(tokenizer.convert_ids_to_tokens(range(len(tokenizer))), object)[ids]
    continuation = np.char.startswith(tokens.astype(str), "##")
    # The flags follow the '##' rule everywhere, even for a word split across two blocks.
    np.testing.assert_array_equal(starts, ~continuation)
    assert not starts[:, 1].all()


def test_keep_remainder_emits_the_final_partial_block(tokenizer, vocab):
    lines = ["alpha beta gamma delta", "epsilon"]
    tokenized = _tokenized(tokenizer, vocab, lines, 1)
    examples = list(pack.packed(tokenized, vocab, 128, keep_remainder=True))
    assert len(examples) == 1
    row = examples[0]["input_ids"].numpy()[0].tolist()
    stream = [t for line in _line_ids(tokenizer, lines) for t in line + [vocab.sep_id]]
    assert row[:len(stream) + 2] == [vocab.cls_id] + stream + [vocab.sep_id]
    assert set(row[len(stream) + 2:]) == {vocab.pad_id}
    assert list(pack.packed(tokenized, vocab, 128)) == []
