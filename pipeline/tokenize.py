"""Tokenizes batches of lines with the model's Hugging Face fast tokenizer, inside tf.data.

Each batch of lines goes to the Rust tokenizer in one `tf.numpy_function`
call (`encode_batch_fast`: no offsets, so faster than `encode_batch`), and
comes back as ragged `ids` plus `word_starts` flags for whole-word masking.
Word starts come from a per-vocabulary-id table of continuation pieces
(WordPiece `##`, or no leading `Ġ`/`▁` for byte-level BPE and sentencepiece,
the rule fairseq's whole-word masking uses), gathered with numpy, so no
per-token Python is needed. Chinese reference indices (`refs`), or jieba on
the fly (`chinese_ref`), turn single-character tokens into continuations of
their word.
"""

import dataclasses
import itertools
import json
import os

import numpy as np
import tensorflow as tf
import tokenizers

from pipeline import chinese_ref
from pipeline import refs as refs_lib
from pipeline.python_calls import CALLS
from pipeline.errors import InputError

_WORD_START_MARKERS = {"ByteLevel": "\u0120", "Metaspace": "\u2581"}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """What packing and masking need from a tokenizer, as plain numbers and tables."""

    size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    is_special: np.ndarray  # bool [size]: never a masking candidate
    is_continuation: np.ndarray  # bool [size]: continues the previous token's word
    tokens: np.ndarray  # object [size]: id -> token string


def _component_types(component):
    """Yields the `type` of a tokenizer.json component and of any nested in a Sequence."""
    if not component:
        return
    yield component.get("type")
    for key in ("pretokenizers", "decoders"):
        for child in component.get(key) or ():
            yield from _component_types(child)


def _continuation_rule(tokenizer):
    """Returns a predicate on token strings: does this piece continue a word?"""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    prefix = spec["model"].get("continuing_subword_prefix")
    if prefix:
        return lambda token: token.startswith(prefix)
    kinds = set(_component_types(spec.get("pre_tokenizer")))
    kinds |= set(_component_types(spec.get("decoder")))
    for kind, marker in _WORD_START_MARKERS.items():
        if kind in kinds:
            return lambda token: not token.startswith(marker)
    return lambda token: False  # no marker known: every token is its own word


def vocabulary(tokenizer):
    """Reads the special ids and the word-continuation table off a fast tokenizer."""
    size = len(tokenizer)
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else (
        tokenizer.bos_token_id)
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (
        tokenizer.eos_token_id)
    ids = {"CLS/BOS": cls_id, "SEP/EOS": sep_id, "PAD": tokenizer.pad_token_id,
           "MASK": tokenizer.mask_token_id}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise InputError(
            f"tokenizer {tokenizer.name_or_path!r} has no {', '.join(missing)} token; "
            "masked language modelling needs CLS/BOS, SEP/EOS, PAD and MASK")
    tokens = np.array(tokenizer.convert_ids_to_tokens(list(range(size))), dtype=object)
    is_special = np.zeros(size, bool)
    is_special[[i for i in tokenizer.all_special_ids if i < size]] = True
    continues = _continuation_rule(tokenizer)
    is_continuation = np.array([continues(t or "") for t in tokens], bool) & ~is_special
    return Vocabulary(size=size, cls_id=cls_id, sep_id=sep_id, pad_id=tokenizer.pad_token_id,
                      mask_id=tokenizer.mask_token_id, is_special=is_special,
                      is_continuation=is_continuation, tokens=tokens)


def _segment_chinese(starts, ids, offsets, lengths, texts, vocab):
    """On-the-fly jieba segmentation: the same continuations a ref file would give."""
    for row, text in enumerate(texts):
        line = text.decode("utf-8", "replace")
        if not chinese_ref.has_chinese(line):
            continue
        begin = offsets[row]
        tokens = vocab.tokens[ids[begin:begin + lengths[row]]]
        for index in chinese_ref.continuations(list(tokens), chinese_ref.segment(line)):
            starts[begin + index] = False


def encode_lines(backend, vocab, texts, refs=None, ref_lines=None, *, ref_source=None,
                 segmentation=None):
    """Tokenizes a batch of lines (bytes) without special tokens.

    Returns flat int32 ids, int64 row lengths and flat bool word starts; the
    first token of every line starts a word. refs (with their [n, 2] text and
    ref line numbers) mark Chinese word continuations.
    """
    lines = [t.decode("utf-8", "replace") for t in texts]
    encodings = backend.encode_batch_fast(lines, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), np.int64, len(encodings))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32,
                      int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    starts = ~vocab.is_continuation[ids]
    starts[offsets[lengths > 0]] = True
    if refs is not None:
        refs_lib.mark_continuations(starts, offsets, lengths, texts, refs, ref_lines, ref_source)
    if segmentation == "jieba":
        _segment_chinese(starts, ids, offsets, lengths, texts, vocab)
    return ids, lengths, starts


def plain_backend(tokenizer):
    """A private copy of the Rust tokenizer with truncation and padding off.

    Calling a transformers tokenizer with truncation or padding leaves them
    set on its shared backend; the pipeline must never see that.
    """
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def one_core_per_call():
    """Turns the Rust tokenizer's own thread pool off, unless TOKENIZERS_PARALLELISM is set.

    tf.data already runs several tokenizer calls at once; each also fanning
    out over every core made the two thread pools fight for the same cores
    (13% fewer tokens/s on 2 cores). Set once, before any call runs: the
    variable is read by Rust threads, so it must not change under them.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tokenize(lines, tokenizer, vocab, *, ref_source=None, segmentation=None):
    """Maps batches {"text"[, "chinese_ref", "ref_lines"]} to ragged {"ids", "word_starts"}.

    Lines that produce no tokens are dropped.
    """
    one_core_per_call()
    backend = plain_backend(tokenizer)
    ref_source = ref_source or refs_lib.RefSource(None, None)

    def encode(element):
        inputs = [element["text"]]
        if "chinese_ref" in element:
            inputs += [element["chinese_ref"], element["ref_lines"]]

        def call(texts, refs=None, ref_lines=None):
            with CALLS:
                ids, lengths, starts = encode_lines(
                    backend, vocab, texts, refs, ref_lines, ref_source=ref_source,
                    segmentation=segmentation)
            return ids, lengths[lengths > 0], starts  # empty lines hold no ids: drop them

        ids, lengths, starts = tf.numpy_function(
            call, inputs, (tf.int32, tf.int64, tf.bool), stateful=False)
        ids.set_shape([None])
        starts.set_shape([None])
        lengths.set_shape([None])
        return {
            "ids": tf.RaggedTensor.from_row_lengths(ids, lengths, validate=False),
            "word_starts": tf.RaggedTensor.from_row_lengths(starts, lengths, validate=False),
        }

    return lines.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
