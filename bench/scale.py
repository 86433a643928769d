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

With --compilation_cache it measures instead what JAX's persistent
compilation cache (in output_dir, train.py's default) saves a restarted run:
a BERT-small run is trained and checkpointed, then resumed from its first
checkpoint several times, alternately with the cache removed (cold) and
kept (warm). The goal is on compilation itself, as JAX's compile events
measure it and each run reports it ("XLA compiled N programs in S s"): the
warm restart's compile seconds at most 0.1 of the cold one's. The JSON also
gives the medians of the time from launch to the resumed run's first train
step, and times what every start pays before the cache can matter (a fresh
process that imports the trainer and loads the tokenizer and a model config).

    python bench/scale.py --compilation_cache
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from pipeline import corpus, tokenizer_training  # noqa: E402

SIZES_MB = (20, 400)
TIME_LIMIT = 1.5  # 400 MB start-up at most this many times the 20 MB one (a shared machine)
RSS_LIMIT = 1.2
FIRST_STEP = "[1] train/"  # CLU's metrics line after step 1 (logging_steps 1)
BERT_SMALL = ("hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024,"
              "max_position_embeddings=128")
CACHE_RATIO_GOAL = 0.1  # warm restart's compile seconds over the cold one's
COMPILED = re.compile(r"XLA compiled \d+ programs in ([\d.]+) s")


def repeat_corpus(base, path, megabytes):
    """Writes `base` repeated to at least `megabytes` MB (each copy whole, lines intact)."""
    with open(base, "rb") as f:
        text = f.read()
    copies = -(-megabytes * 2**20 // len(text))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(text)
    return os.path.getsize(path)


def run_config(tmp, train_file, tokenizer_dir, name, **overrides):
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
        **overrides,
    }
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return path


def cpu_seconds(pid):
    """CPU time (user + system, all threads) a running process has used so far (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_environment():
    """A train.py child's environment: CPU JAX, quiet TensorFlow, train.py's own cache dir."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # train.py's default: under output_dir
    return env


def measure(config_file, timeout, first_step=FIRST_STEP, cpu=None):
    """(seconds from launch to the first train step, peak RSS in MB, seconds XLA compiled)
    of one train.py run.

    With a list `cpu`, also appends the CPU seconds the run had used by then.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), config_file],
                            cwd=ROOT, env=child_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    guard = threading.Timer(timeout, proc.kill)  # train.py ends by itself (max_steps)
    guard.start()
    first_step_seconds, compiled_seconds, tail = None, None, []
    for line in proc.stdout:
        if first_step_seconds is None and first_step in line:
            first_step_seconds = time.perf_counter() - start
            if cpu is not None:
                cpu.append(cpu_seconds(proc.pid))
        compiled = COMPILED.search(line)
        if compiled:
            compiled_seconds = float(compiled.group(1))
        tail = (tail + [line])[-20:]
    _, status, usage = os.wait4(proc.pid, 0)
    guard.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or first_step_seconds is None:
        raise RuntimeError(f"train.py {config_file} failed ({proc.returncode}):\n"
                           + "".join(tail))
    return first_step_seconds, usage.ru_maxrss / 1024, compiled_seconds  # ru_maxrss: kB


def fixed_start(tokenizer_dir, timeout):
    """Seconds a fresh process takes to import train.py and load the tokenizer and a config."""
    code = ("import train; from model import configuration; from pipeline import inputs; "
            f"inputs.load_tokenizer({tokenizer_dir!r}); "
            "configuration.load_config({'model_type': 'bert'})")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_environment(), check=True,
                   stdout=subprocess.DEVNULL, timeout=timeout)
    return time.perf_counter() - start


def compilation_cache(tmp, train_file, tokenizer_dir, timeout, rounds):
    """Time to the first step of a resumed BERT-small run, cache removed vs kept."""
    config_file = run_config(tmp, train_file, tokenizer_dir, "cache", config_overrides=BERT_SMALL,
                             max_steps=4, save_steps=2, per_device_train_batch_size=4)
    output_dir = os.path.join(tmp, "out_cache")
    measure(config_file, timeout)  # trains 4 steps: checkpoints 2 and 4, a warm cache
    times = {"cold": [], "warm": []}
    compiled = {"cold": [], "warm": []}
    fixed_starts = []
    cpu = {"cold": [], "warm": []}  # CPU seconds to the first step: less sensitive to load
    for _ in range(rounds):
        fixed_starts.append(fixed_start(tokenizer_dir, timeout))
        for kind in ("cold", "warm"):  # cold first: it fills the cache the warm run reads
            shutil.rmtree(os.path.join(output_dir, "checkpoints", "4"))  # resume from step 2
            if kind == "cold":
                shutil.rmtree(os.path.join(output_dir, "compilation_cache"))
            seconds, _, compiled_seconds = measure(config_file, timeout,
                                                   first_step="[3] train/", cpu=cpu[kind])
            times[kind].append(seconds)
            compiled[kind].append(compiled_seconds)
    entries = os.listdir(os.path.join(output_dir, "compilation_cache"))
    cold, warm = (statistics.median(times[kind]) for kind in ("cold", "warm"))
    fixed = statistics.median(fixed_starts)
    cpu_cold, cpu_warm = (statistics.median(cpu[kind]) for kind in ("cold", "warm"))
    compiled_cold, compiled_warm = (statistics.median(compiled[kind])
                                    for kind in ("cold", "warm"))
    return {
        "benchmark": "compilation_cache", "model": "bert-small (" + BERT_SMALL + ")",
        "cache_entries": len(entries),
        "resumed_compile_s": {k: [round(t, 2) for t in v] for k, v in compiled.items()},
        "compile_warm_cold_ratio": round(compiled_warm / compiled_cold, 3),
        "resumed_time_to_first_step_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "resumed_cpu_s_to_first_step": {k: [round(t, 2) for t in v] for k, v in cpu.items()},
        "cold_median_s": round(cold, 2), "warm_median_s": round(warm, 2),
        "warm_cold_ratio": round(warm / cold, 3),
        "fixed_start_s": [round(t, 2) for t in fixed_starts],
        "fixed_start_median_s": round(fixed, 2),
        "fixed_start_share_of_cold": round(fixed / cold, 3),
        "warm_cold_ratio_above_fixed_start": round((warm - fixed) / (cold - fixed), 3),
        "warm_cold_cpu_ratio": round(cpu_warm / cpu_cold, 3), "goal_ratio": CACHE_RATIO_GOAL,
        "ok": compiled_warm / compiled_cold <= CACHE_RATIO_GOAL,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds per train.py run")
    parser.add_argument("--compilation_cache", action="store_true",
                        help="measure a resumed run's start with the compilation cache instead")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --compilation_cache: resumed runs of each kind")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:  # also removes the 400 MB corpus
        base = os.path.join(tmp, "stdlib.txt")
        corpus.write_corpus(base)
        tokenizer_dir = os.path.join(tmp, "tokenizer")
        tokenizer_training.train_wordpiece([base], vocab_size=2000).save_pretrained(tokenizer_dir)
        if args.compilation_cache:
            print(json.dumps(compilation_cache(tmp, base, tokenizer_dir, args.timeout,
                                               args.rounds)))
            return
        results = {}
        for megabytes in SIZES_MB:
            name = f"{megabytes}MB"
            train_file = os.path.join(tmp, f"corpus_{name}.txt")
            size = repeat_corpus(base, train_file, megabytes)
            seconds, rss, _ = measure(run_config(tmp, train_file, tokenizer_dir, name),
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
