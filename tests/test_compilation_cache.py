"""JAX's persistent compilation cache in output_dir: where it goes, and that a bad entry is harmless."""

import os
import shutil

import pytest

from trainer import compilation_cache
import train_runs

STEPS = 8
SAVE_STEPS = 4


def test_cache_dir_flag_then_environment_then_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    default = str(tmp_path / "run" / compilation_cache.DEFAULT_DIR)
    assert compilation_cache.cache_dir(None, "run") == default  # absolute, from a relative one
    assert compilation_cache.cache_dir(None, "gs://b/run") == "gs://b/run/compilation_cache"
    assert compilation_cache.cache_dir("gs://b/cache", "run") == "gs://b/cache"
    assert compilation_cache.cache_dir("", "run") is None  # off
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/cache")
    assert compilation_cache.cache_dir(None, "run") == "/shared/cache"
    assert compilation_cache.cache_dir("mine", "run") == str(tmp_path / "mine")


@pytest.mark.slow
def test_unreadable_or_foreign_cache_entries_are_ignored(tmp_path, corpus_file, tokenizer_dir):
    """Entries that fail to load (corrupt, or another version's bytes under a key) only warn."""
    output_dir = tmp_path / "run"
    config = train_runs.tiny_config(corpus_file, tokenizer_dir, max_steps=STEPS,
                                    save_steps=SAVE_STEPS, seed=2)
    config_file = train_runs.write_config(tmp_path / "config.json", config, output_dir)
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the default: output_dir/compilation_cache
    first = train_runs.start(config_file, env=env)
    code, console = train_runs.finish(first, timeout=300)
    assert code == 0, console[-4000:]
    cache = output_dir / compilation_cache.DEFAULT_DIR
    entries = sorted(cache.iterdir())
    assert entries, "the run cached no compiled step"

    for entry in entries:  # same keys, bytes nobody can load
        entry.write_bytes(b"written by some other JAX " * 64)
    foreign = cache / f"jit_train_step-{'0' * 64}-cache"  # a key this JAX never computes
    foreign.write_bytes(b"\x00" * 1024)
    shutil.rmtree(output_dir / "checkpoints" / str(STEPS))  # resume from SAVE_STEPS

    second = train_runs.start(config_file, env=env)
    code, console = train_runs.finish(second, timeout=300)
    assert code == 0, console[-4000:]
    assert f"Resuming from the checkpoint of step {SAVE_STEPS}" in console
    assert "Error reading persistent compilation cache entry" in console, console[-4000:]
    assert "Traceback" not in console
    logdir = output_dir / "logs"
    expected = train_runs.step_losses(logdir, first.pid)
    assert train_runs.step_losses(logdir, second.pid) == {
        step: expected[step] for step in range(SAVE_STEPS + 1, STEPS + 1)}
    assert foreign.read_bytes() == b"\x00" * 1024  # left alone
