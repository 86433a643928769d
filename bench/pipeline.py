"""Input-pipeline throughput against its limit, the tokenizer alone, measured in the same run.

Prints one JSON line: tokens_per_sec (real, non-pad tokens out of the full
pipeline: read, tokenize, pack, mask, batch), tokenizer_tokens_per_sec (the
same tokenizer's `encode_batch_fast` on batches of the same file's lines),
their ratio (goal >= 0.9), time_to_first_batch_s and peak_rss_mb; plus the
same comparison in process CPU time per token, steadier on a shared
machine. Without --train_file/--tokenizer it builds the embedded corpus
(repeated to --corpus_mb) and a WordPiece tokenizer in a temporary directory.
With --mixture_sources N the file's lines are dealt round-robin into N files
mixed as one mixture (weights by size): `ratio` and `cpu_ratio` are then the
mixture's, `single_source_ratio` and `single_source_cpu_ratio` the one
file's, measured in the same run.

    python bench/pipeline.py [--train_file F --tokenizer DIR] [--max_seq_length 128]
        [--batch_size 256] [--line_by_line] [--whole_word_masking] [--seconds 20]
        [--corpus_mb N] [--read_block_bytes B] [--blocks_mixed K] [--mixture_sources N]
"""

import os
import pathlib
import sys

# This file is named pipeline.py: keep its directory off the path so that `pipeline` is the
# package at the repository root.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _ROOT / "bench"]
sys.path.insert(0, str(_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402

from pipeline import config as config_lib  # noqa: E402
from pipeline import corpus, inputs  # noqa: E402
from pipeline import tokenize, tokenizer_training  # noqa: E402

GOAL_RATIO = 0.9
_READ_LINES = 1024
_PARALLELISM = "TOKENIZERS_PARALLELISM"


def _build_corpus(base, megabytes):
    """The embedded corpus, repeated to about `megabytes` (streamed, never held in memory)."""
    if not megabytes:
        return base
    directory = base.parent
    path = directory / f"stdlib-{megabytes}mb.txt"
    with path.open("wb") as out:
        while out.tell() < megabytes * 2**20:
            with base.open("rb") as f:
                shutil.copyfileobj(f, out)
    return path


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def _deal_lines(path, count, directory):
    """`count` files in `directory` holding the lines of the text file `path` dealt round-robin."""
    parts = [pathlib.Path(directory, f"source-{k}-of-{count}.txt") for k in range(count)]
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(p.open("w", encoding="utf-8")) for p in parts]
        with path.open(encoding="utf-8") as f:
            for index, line in enumerate(f):
                outs[index % count].write(line)
    return parts


def _pipeline_rate(dataset, seconds):
    """(real tokens/s, process CPU µs per token, seconds to the first batch) of a dataset."""
    start = time.perf_counter()
    iterator = iter(dataset())
    next(iterator)["input_ids"].numpy()
    first = time.perf_counter() - start
    tokens = 0
    start, cpu = time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - start < seconds:
        tokens += int(next(iterator)["attention_mask"].numpy().sum())
    rate = tokens / (time.perf_counter() - start)
    cpu_per_token = (_cpu_seconds() - cpu) / tokens * 1e6
    del iterator
    return rate, cpu_per_token, first


@contextlib.contextmanager
def _tokenizer_thread_pool():
    """The Rust tokenizer's own thread pool on (its default), whatever the environment says."""
    saved = os.environ.get(_PARALLELISM)
    os.environ[_PARALLELISM] = "true"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[_PARALLELISM]
        else:
            os.environ[_PARALLELISM] = saved


def _tokenizer_rate(path, tokenizer, seconds):
    """(tokens/s, process CPU µs per token) of the tokenizer alone on the file's lines.

    Only the time spent encoding counts. It runs before the pipeline, with
    the tokenizer's thread pool on: its fastest batch encoding, where the
    pipeline turns the pool off for its own parallel calls.
    """
    backend = tokenize.plain_backend(tokenizer)
    tokens = elapsed = cpu = 0.0
    while elapsed < seconds:
        with open(path, encoding="utf-8") as f:
            lines = (line.strip() for line in f)
            while elapsed < seconds:
                batch = list(itertools.islice((line for line in lines if line), _READ_LINES))
                if not batch:
                    break
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                encodings = backend.encode_batch_fast(batch)
                elapsed += time.perf_counter() - start
                cpu += _cpu_seconds() - cpu_start
                tokens += sum(len(e) for e in encodings)
    return tokens / elapsed, cpu / tokens * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", help="Default: the embedded corpus.")
    parser.add_argument("--tokenizer", help="Default: a WordPiece tokenizer trained on it.")
    parser.add_argument("--corpus_mb", type=int, default=0,
                        help="Repeat the embedded corpus to this size (without --train_file).")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--line_by_line", action="store_true")
    parser.add_argument("--whole_word_masking", action="store_true")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mixture_sources", type=int, default=0,
                        help="Also measure a mixture of this many sources (ratio is then its).")
    parser.add_argument("--read_block_bytes", type=int,
                        default=config_lib.DataConfig.read_block_bytes)
    parser.add_argument("--blocks_mixed", type=int, default=config_lib.DataConfig.blocks_mixed)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp, "stdlib.txt")
        if not (args.train_file and args.tokenizer):
            corpus.write_corpus(base)
        train_file = args.train_file or _build_corpus(base, args.corpus_mb)
        tokenizer_dir = args.tokenizer
        if not tokenizer_dir:
            tokenizer_dir = pathlib.Path(tmp, "tokenizer")
            tokenizer = tokenizer_training.train_wordpiece([base], vocab_size=8000)
            tokenizer.save_pretrained(tokenizer_dir)
        tokenizer = inputs.load_tokenizer(tokenizer_dir)
        config = config_lib.DataConfig(
            train_file=str(train_file), max_seq_length=args.max_seq_length,
            line_by_line=args.line_by_line, whole_word_masking=args.whole_word_masking,
            read_block_bytes=args.read_block_bytes, blocks_mixed=args.blocks_mixed)
        with _tokenizer_thread_pool():
            limit, limit_cpu = _tokenizer_rate(train_file, tokenizer, args.seconds)
        rate, cpu, first = _pipeline_rate(functools.partial(
            inputs.train_dataset, config, tokenizer, per_device_batch_size=args.batch_size,
            local_device_count=1), args.seconds)
        single = {"single_source_ratio": round(rate / limit, 3),
                  "single_source_cpu_ratio": round(limit_cpu / cpu, 3)}
        if args.mixture_sources:
            files = _deal_lines(pathlib.Path(train_file), args.mixture_sources, tmp)
            mixed = dataclasses.replace(config, train_file=None, train_mixture=",".join(
                f"s{k}={f}" for k, f in enumerate(files)))
            rate, cpu, first = _pipeline_rate(functools.partial(
                inputs.train_dataset, mixed, tokenizer, per_device_batch_size=args.batch_size,
                local_device_count=1), args.seconds)
        result = {
            "bench": "pipeline",
            "tokens_per_sec": round(rate),
            "tokenizer_tokens_per_sec": round(limit),
            "ratio": round(rate / limit, 3),
            "goal_ratio": GOAL_RATIO,
            "ok": rate / limit >= GOAL_RATIO,
            # Less sensitive to other processes on a shared machine than the wall-clock ratio.
            "cpu_us_per_token": round(cpu, 3),
            "tokenizer_cpu_us_per_token": round(limit_cpu, 3),
            "cpu_ratio": round(limit_cpu / cpu, 3),
            # CPU seconds per second: how much of the machine each side kept busy.
            "cores_busy": round(rate * cpu / 1e6, 2),
            "tokenizer_cores_busy": round(limit * limit_cpu / 1e6, 2),
            "time_to_first_batch_s": round(first, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "corpus_mb": round(os.path.getsize(train_file) / 2**20, 1),
            "max_seq_length": args.max_seq_length,
            "batch_size": args.batch_size,
            "line_by_line": args.line_by_line,
            "whole_word_masking": args.whole_word_masking,
            "read_block_bytes": args.read_block_bytes,
            "blocks_mixed": args.blocks_mixed,
        }
        if args.mixture_sources:
            result.update(mixture_sources=args.mixture_sources, **single)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
