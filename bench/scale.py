"""Does start-up grow with the corpus? Time to the first train step and peak RSS, 20 vs 400 MB.

Prints one JSON line. For each corpus size, a real `python train.py` process
(tiny BERT, max_steps set so that no counting pass runs, a temporary
output_dir) trains on the embedded corpus repeated to that size; the time is
from its launch to its first logged train step (imports and compilation
included), the memory its peak resident set (ru_maxrss from wait4, so of
that process alone). A streaming pipeline keeps both flat: the JSON gives the
400 MB / 20 MB ratios and whether they stay within the limits, which are
relative to the 20 MB run of the same invocation. Both runs read the same
(warm) Python and model files, and the 20 MB run goes first, so its start-up
is the one that pays any cold caches.

    python bench/scale.py
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from pipeline import corpus, vocab  # noqa: E402

SIZES_MB = (20, 400)
TIME_LIMIT = 1.5  # 400 MB start-up at most this many times the 20 MB one (a shared machine)
RSS_LIMIT = 1.2
FIRST_STEP = "[1] train/"  # CLU's metrics line after step 1 (logging_steps 1)


def repeat_corpus(base, path, megabytes):
    """Writes `base` repeated to at least `megabytes` MB (each copy whole, lines intact)."""
    with open(base, "rb") as f:
        text = f.read()
    copies = -(-megabytes * 2**20 // len(text))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(text)
    return os.path.getsize(path)


def run_config(tmp, train_file, tokenizer_dir, name):
    config = {
        "model_type": "bert",
        "config_overrides": "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,"
                            "intermediate_size=37,max_position_embeddings=128",
        "tokenizer_name": tokenizer_dir,
        "train_file": train_file,
        "max_seq_length": 128,
        "do_train": True,
        "per_device_train_batch_size": 8,
        "max_steps": 2,
        "logging_steps": 1,
        "output_dir": os.path.join(tmp, f"out_{name}"),
    }
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return path


def measure(config_file, timeout):
    """(seconds from launch to the first train step, peak RSS in MB) of one train.py run."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), config_file],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    guard = threading.Timer(timeout, proc.kill)  # train.py ends by itself (max_steps)
    guard.start()
    first_step, tail = None, []
    for line in proc.stdout:
        if first_step is None and FIRST_STEP in line:
            first_step = time.perf_counter() - start
        tail = (tail + [line])[-20:]
    _, status, usage = os.wait4(proc.pid, 0)
    guard.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or first_step is None:
        raise RuntimeError(f"train.py {config_file} failed ({proc.returncode}):\n"
                           + "".join(tail))
    return first_step, usage.ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds per train.py run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:  # also removes the 400 MB corpus
        base = os.path.join(tmp, "stdlib.txt")
        corpus.write_corpus(base)
        tokenizer_dir = os.path.join(tmp, "tokenizer")
        vocab.train_wordpiece([base], vocab_size=2000).save_pretrained(tokenizer_dir)
        results = {}
        for megabytes in SIZES_MB:
            name = f"{megabytes}MB"
            train_file = os.path.join(tmp, f"corpus_{name}.txt")
            size = repeat_corpus(base, train_file, megabytes)
            seconds, rss = measure(run_config(tmp, train_file, tokenizer_dir, name),
                                   args.timeout)
            os.remove(train_file)
            results[name] = {"corpus_bytes": size, "time_to_first_step_s": round(seconds, 2),
                             "peak_rss_mb": round(rss, 1)}
    small, large = (results[f"{mb}MB"] for mb in SIZES_MB)
    time_ratio = large["time_to_first_step_s"] / small["time_to_first_step_s"]
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(json.dumps({
        "benchmark": "scale",
        **results,
        "time_ratio_400MB_20MB": round(time_ratio, 3),
        "rss_ratio_400MB_20MB": round(rss_ratio, 3),
        "time_limit": TIME_LIMIT,
        "rss_limit": RSS_LIMIT,
        "flat": time_ratio <= TIME_LIMIT and rss_ratio <= RSS_LIMIT,
    }))


if __name__ == "__main__":
    main()
