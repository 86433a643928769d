"""Turns tokenized lines into fixed-length examples: line by line, or packed.

Both work on whole batches with ragged ops (one tf.data element per batch of
lines, never per line) and give static [n, max_seq_length] int32 ids plus
word-start flags, every row laid out as CLS/BOS, content, SEP/EOS, padding.

Packing concatenates the documents of the stream, each followed by the
separator, and cuts blocks of `max_seq_length - 2` content tokens; the
tokens that do not fill a block are carried to the next batch with
`Dataset.scan`, so nothing is dropped but the stream's final partial block
(which `keep_remainder=True`, for evaluation, emits padded instead).
"""

import tensorflow as tf


def _frame(content, starts, vocab, max_seq_length):
    """[CLS] content [SEP] padded to max_seq_length, for ragged rows of <= length - 2."""
    rows = content.nrows()
    cls = tf.fill([rows, 1], tf.constant(vocab.cls_id, tf.int32))
    sep = tf.fill([rows, 1], tf.constant(vocab.sep_id, tf.int32))
    edge = tf.ones([rows, 1], tf.bool)
    ids = tf.concat([cls, content, sep], axis=1).to_tensor(
        vocab.pad_id, shape=[None, max_seq_length])
    word_starts = tf.concat([edge, starts, edge], axis=1).to_tensor(
        True, shape=[None, max_seq_length])
    return {"input_ids": ids, "word_starts": word_starts}


def line_by_line(tokenized, vocab, max_seq_length):
    """One example per line, truncated to max_seq_length with the specials, then padded."""

    def frame(element):
        room = max_seq_length - 2
        return _frame(element["ids"][:, :room], element["word_starts"][:, :room], vocab,
                      max_seq_length)

    return tokenized.map(frame, num_parallel_calls=tf.data.AUTOTUNE)


def packed(tokenized, vocab, max_seq_length, keep_remainder=False):
    """Concatenate-and-chunk packing across batches; see the module docstring."""
    room = max_seq_length - 2

    def with_separators(element):
        ids, starts = element["ids"], element["word_starts"]
        rows = ids.nrows()
        sep = tf.fill([rows, 1], tf.constant(vocab.sep_id, tf.int32))
        stream = tf.concat([ids, sep], axis=1).flat_values
        stream_starts = tf.concat([starts, tf.ones([rows, 1], tf.bool)], axis=1).flat_values
        return {"ids": stream, "word_starts": stream_starts, "flush": False}

    def blocks(ids, starts, rows):
        """[CLS] block [SEP] for `rows` full blocks of `room` tokens: dense, no padding."""
        edge = tf.ones([rows, 1], tf.bool)
        return {
            "input_ids": tf.concat([tf.fill([rows, 1], tf.constant(vocab.cls_id, tf.int32)),
                                    tf.reshape(ids, [rows, room]),
                                    tf.fill([rows, 1], tf.constant(vocab.sep_id, tf.int32))], 1),
            "word_starts": tf.concat([edge, tf.reshape(starts, [rows, room]), edge], 1),
        }

    def cut(carry, element):
        ids = tf.concat([carry[0], element["ids"]], axis=0)
        starts = tf.concat([carry[1], element["word_starts"]], axis=0)
        size = tf.size(ids, out_type=tf.int64)
        full = size // room
        used = full * room
        examples = blocks(ids[:used], starts[:used], full)
        if keep_remainder:
            tail = tf.reshape(tf.where(element["flush"], size - used, tf.zeros_like(size)), [1])
            tail = tf.boolean_mask(tail, tail > 0)
            end = used + tf.reduce_sum(tail)
            last = _frame(tf.RaggedTensor.from_row_lengths(ids[used:end], tail, validate=False),
                          tf.RaggedTensor.from_row_lengths(starts[used:end], tail,
                                                           validate=False),
                          vocab, max_seq_length)
            examples = {key: tf.concat([examples[key], last[key]], 0) for key in examples}
            used = end
        return (ids[used:], starts[used:]), examples

    streams = tokenized.map(with_separators, num_parallel_calls=tf.data.AUTOTUNE)
    if keep_remainder:
        streams = streams.concatenate(tf.data.Dataset.from_tensors(
            {"ids": tf.zeros([0], tf.int32), "word_starts": tf.zeros([0], tf.bool),
             "flush": True}))
    empty = (tf.zeros([0], tf.int32), tf.zeros([0], tf.bool))
    return streams.scan(empty, cut).filter(lambda e: tf.shape(e["input_ids"])[0] > 0)


def pack(tokenized, vocab, config, keep_remainder=False):
    """Line-by-line or packed examples, as config.line_by_line says."""
    if config.line_by_line:
        return line_by_line(tokenized, vocab, config.max_seq_length)
    return packed(tokenized, vocab, config.max_seq_length, keep_remainder)
