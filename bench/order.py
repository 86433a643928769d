"""Order of the training stream on an ordered corpus, against a global shuffle of the same lines.

Prints one JSON line for one setting of the block reader (read_block_bytes,
blocks_mixed, shuffle_buffer_size): over one epoch of `line_batches`
(shuffle on, as training reads), Spearman's rho of a line's position in the
stream against its position in the file (0 for a global shuffle, 1 for
reading in order); the number of the file's 100 equal regions that a batch
of 256 consecutive stream lines draws from, against a global shuffle of the
same lines measured in the same run (ratio goal >= GOAL_MIXING), and the
same count for pieces of 64 kB (places in the file, whatever its size);
lines read per second; peak RSS; and the bytes of a saved iterator
mid-epoch. The
corpus is the embedded one, repeated to --corpus_mb, each line prefixed
with its number, so the file is ordered.

    python bench/order.py [--corpus_mb 64] [--read_block_bytes N] [--blocks_mixed K]
        [--shuffle_buffer_size L] [--seed S] [--train_file F (lines start with their number)]
"""

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from pipeline import blocks, corpus, sources  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402

GOAL_MIXING = 0.5  # regions per batch at least half a global shuffle's
_BATCH = 256
_REGIONS = 100
_KEY_DIGITS = 10
_PIECE_BYTES = 64 << 10


def write_ordered(path, base, megabytes):
    """The base corpus repeated to `megabytes` MB, each line prefixed with its number."""
    lines = [line for line in base.read_text(encoding="utf-8").splitlines() if line.strip()]
    number = written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < megabytes * 2**20:
            for line in lines:
                text = f"{number:0{_KEY_DIGITS}d} {line}\n"
                f.write(text)
                written += len(text.encode("utf-8"))
                number += 1
    return number


def spearman(keys):
    """Spearman's rho of stream position against file position (keys: ranks in the file)."""
    ranks = np.argsort(np.argsort(keys))
    return float(np.corrcoef(np.arange(len(keys)), ranks)[0, 1])


def regions_per_batch(regions):
    """Mean number of distinct regions that each batch of _BATCH stream lines draws from."""
    batches = len(regions) // _BATCH
    return float(np.mean([len(np.unique(regions[i * _BATCH:(i + 1) * _BATCH]))
                          for i in range(batches)]))


def read_epoch(config, tmp):
    """(line numbers in stream order, seconds, bytes of an iterator saved mid-epoch)."""
    ds = sources.line_batches(config, "train", shuffle=True, num_epochs=1).map(
        lambda batch: tf.strings.to_number(tf.strings.substr(batch["text"], 0, _KEY_DIGITS),
                                           tf.int64))
    iterator = iter(ds)
    keys, saved_bytes = [], 0
    start = time.perf_counter()
    for count, batch in enumerate(iterator):
        keys.append(batch.numpy())
        if count == 50:
            paused = time.perf_counter()
            tf.train.Checkpoint(iterator=iterator).write(os.path.join(tmp, "it"))
            saved_bytes = sum(p.stat().st_size for p in pathlib.Path(tmp).glob("it*"))
            start += time.perf_counter() - paused
    return np.concatenate(keys), time.perf_counter() - start, saved_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", help="Default: the embedded corpus, numbered.")
    parser.add_argument("--corpus_mb", type=int, default=64)
    parser.add_argument("--read_block_bytes", type=int, default=blocks.BLOCK_BYTES)
    parser.add_argument("--blocks_mixed", type=int, default=blocks.BLOCKS_MIXED)
    parser.add_argument("--shuffle_buffer_size", type=int,
                        default=DataConfig.shuffle_buffer_size)
    parser.add_argument("--seed", type=int, default=DataConfig.seed)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        train_file = args.train_file
        if not train_file:
            base = pathlib.Path(tmp, "stdlib.txt")
            corpus.write_corpus(base)
            train_file = pathlib.Path(tmp, "ordered.txt")
            write_ordered(train_file, base, args.corpus_mb)
        config = DataConfig(train_file=str(train_file), validation_file=str(train_file),
                            shuffle_buffer_size=args.shuffle_buffer_size,
                            read_block_bytes=args.read_block_bytes,
                            blocks_mixed=args.blocks_mixed, seed=args.seed)
        keys, seconds, saved_bytes = read_epoch(config, tmp)
        size_mb = os.path.getsize(train_file) / 2**20
    total = len(keys)
    shuffled = np.random.default_rng(0).permutation(total)
    mixing = regions_per_batch(keys * _REGIONS // total)
    best_mixing = regions_per_batch(shuffled * _REGIONS // total)
    piece_of_line = np.floor(np.arange(total) * (size_mb * 2**20 / _PIECE_BYTES / total))
    pieces = regions_per_batch(piece_of_line[keys])
    print(json.dumps({
        "bench": "order",
        "read_block_bytes": args.read_block_bytes,
        "blocks_mixed": args.blocks_mixed,
        "shuffle_buffer_size": args.shuffle_buffer_size,
        "seed": args.seed,
        "corpus_mb": round(size_mb, 1),
        "lines": total,
        "spearman_rho": round(spearman(keys), 4),
        "regions_per_batch": round(mixing, 1),
        "shuffled_regions_per_batch": round(best_mixing, 1),
        "mixing_ratio": round(mixing / best_mixing, 3),
        "pieces_64k_per_batch": round(pieces, 1),
        "shuffled_pieces_64k_per_batch": round(regions_per_batch(piece_of_line[shuffled]), 1),
        "goal_mixing_ratio": GOAL_MIXING,
        "ok": mixing / best_mixing >= GOAL_MIXING,
        "lines_per_sec": round(total / seconds),
        "mb_per_sec": round(size_mb / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "saved_iterator_mb": round(saved_bytes / 2**20, 2),
    }))


if __name__ == "__main__":
    main()
