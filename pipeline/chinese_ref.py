"""Chinese whole-word references: which tokens continue a jieba word.

Writes ref files in the format of Hugging Face's `run_chinese_ref.py` (one
JSON list per non-empty line of the text file; each number the index, with
CLS at 0, of a single-character Chinese token that continues a word), so
existing Chinese whole-word-masking setups keep working; and gives the same
continuations on the fly (`chinese_word_segmentation="jieba"`). jieba is
used instead of LTP because it is light and pure Python.

    python -m pipeline.chinese_ref --input TEXT --tokenizer DIR --output REF [--workers N]
"""

import argparse
import functools
import itertools
import json
import logging
import multiprocessing
import re

from pipeline.tokenizer_files import load_tokenizer

# CJK Unified Ideographs and their extensions, plus compatibility ideographs: the ranges
# BERT's tokenizer treats as Chinese characters.
_CHINESE = re.compile(
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]")
_CHUNK_LINES = 256


def has_chinese(text):
    return _CHINESE.search(text) is not None


def _is_chinese_word(text):
    return bool(text) and all(_CHINESE.fullmatch(char) for char in text)


@functools.cache
def _jieba():
    import jieba  # imported on first use: it loads its dictionary (about a second)

    jieba.setLogLevel(logging.WARNING)
    return jieba


def segment(text):
    """Splits text into words with jieba (its default, accurate mode)."""
    return _jieba().lcut(text)


def continuations(tokens, words):
    """Indices of tokens that continue a multi-character Chinese word of `words`.

    Scans the tokens left to right, at each Chinese token taking the longest
    run of Chinese tokens whose concatenation is one of the words; only
    single-character tokens are reported (the ref format's rule).
    """
    vocabulary = {w for w in words if len(w) > 1 and _is_chinese_word(w)}
    if not vocabulary:
        return []
    longest = max(len(w) for w in vocabulary)
    found = []
    i = 0
    while i < len(tokens):
        step = 1
        if _is_chinese_word(tokens[i]):
            for size in range(min(longest, len(tokens) - i), 1, -1):
                if "".join(tokens[i:i + size]) in vocabulary:
                    found.extend(j for j in range(i + 1, i + size) if len(tokens[j]) == 1
                                 and _is_chinese_word(tokens[j]))
                    step = size
                    break
        i += step
    return found


def line_refs(tokenizer, lines):
    """The ref list (CLS at index 0) of each line."""
    encodings = tokenizer(lines, add_special_tokens=False, truncation=False, padding=False)
    refs = []
    for line, ids in zip(lines, encodings["input_ids"]):
        if not has_chinese(line):
            refs.append([])
            continue
        tokens = tokenizer.convert_ids_to_tokens(ids)
        refs.append([i + 1 for i in continuations(tokens, segment(line))])
    return refs


_worker_tokenizer = None


def _init_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _chunk_refs(lines):
    return line_refs(_worker_tokenizer, lines)


def _non_empty_lines(path):
    """The lines the pipeline reads from a text file: stripped, blank ones skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def _chunks(iterable, size):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def write_refs(input_path, tokenizer, output_path, workers=1):
    """Writes the ref file for `input_path`; returns the number of lines written."""
    count = 0
    # Spawned, not forked: the caller may be running threads (TensorFlow, JAX) that a fork
    # would copy mid-lock.
    spawn = multiprocessing.get_context("spawn")
    with open(output_path, "w", encoding="utf-8") as out, spawn.Pool(
            workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        for refs in pool.imap(_chunk_refs, _chunks(_non_empty_lines(input_path), _CHUNK_LINES)):
            out.writelines(json.dumps(ref) + "\n" for ref in refs)
            count += len(refs)
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Text file, one example per line.")
    parser.add_argument("--tokenizer", required=True, help="The model's tokenizer directory.")
    parser.add_argument("--output", required=True, help="Ref file to write.")
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    count = write_refs(args.input, tokenizer, args.output, args.workers)
    print(f"wrote {count} reference lines to {args.output}")


if __name__ == "__main__":
    main()
