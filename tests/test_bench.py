"""bench/pipeline.py runs end to end and prints one JSON line of consistent figures.

Only the shape of the result is checked: its speed goal is for quiet machines.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_pipeline_bench(corpus_file, tokenizer_dir, *flags):
    command = [sys.executable, os.path.join(ROOT, "bench", "pipeline.py"),
               "--train_file", str(corpus_file), "--tokenizer", str(tokenizer_dir),
               "--batch_size", "32", "--seconds", "1", *flags]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_pipeline_bench_prints_one_json_line(corpus_file, tokenizer_dir):
    figures = _run_pipeline_bench(corpus_file, tokenizer_dir)
    assert figures["tokens_per_sec"] > 0 and figures["tokenizer_tokens_per_sec"] > 0
    ratio = figures["tokens_per_sec"] / figures["tokenizer_tokens_per_sec"]
    assert abs(figures["ratio"] - ratio) < 1e-3
    assert figures["goal_ratio"] == 0.9 and figures["ok"] == (ratio >= 0.9)
    assert 0 < figures["time_to_first_batch_s"] < 60
    assert figures["peak_rss_mb"] > 100
    assert figures["batch_size"] == 32 and not figures["line_by_line"]


@pytest.mark.slow
def test_pipeline_bench_of_a_mixture(corpus_file, tokenizer_dir):
    figures = _run_pipeline_bench(corpus_file, tokenizer_dir, "--mixture_sources", "3")
    assert figures["mixture_sources"] == 3
    assert abs(figures["ratio"] - figures["tokens_per_sec"] /
               figures["tokenizer_tokens_per_sec"]) < 1e-3  # the mixture's
    assert figures["single_source_ratio"] > 0 and figures["single_source_cpu_ratio"] > 0
