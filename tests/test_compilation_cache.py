"""JAX's persistent compilation cache in output_dir: where it goes, and that a bad entry is harmless."""

import os
import re
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


def compile_summary(console):
    """(programs compiled, their seconds, programs loaded from the cache) of a finished run."""
    found = re.search(r"XLA compiled (\d+) programs in ([\d.]+) s.*; (\d+) loaded from the "
                      r"compilation cache", console)
    assert found, console[-4000:]
    return int(found.group(1)), float(found.group(2)), int(found.group(3))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file, tokenizer_dir):
    """A run with the cache in output_dir; rerun from SAVE_STEPS on it; rerun on a broken cache.

    Returns {"cold"|"warm"|"broken": (pid, console)} and the output_dir.
    """
    tmp_path = tmp_path_factory.mktemp("cache_runs")
    output_dir = tmp_path / "run"
    config = train_runs.tiny_config(corpus_file, tokenizer_dir, max_steps=STEPS,
                                    save_steps=SAVE_STEPS, seed=2, do_eval=True,
                                    validation_file=str(corpus_file), max_eval_samples=16,
                                    per_device_eval_batch_size=2)
    config_file = train_runs.write_config(tmp_path / "config.json", config, output_dir)
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the default: output_dir/compilation_cache

    def run():
        process = train_runs.start(config_file, env=env)
        code, console = train_runs.finish(process, timeout=300)
        assert code == 0, console[-4000:]
        return process.pid, console

    consoles = {"cold": run()}
    shutil.rmtree(output_dir / "checkpoints" / str(STEPS))  # resume from SAVE_STEPS
    consoles["warm"] = run()
    cache = output_dir / compilation_cache.DEFAULT_DIR
    entries = sorted(cache.iterdir())
    assert entries, "the run cached no compiled step"
    for entry in entries:  # same keys, bytes nobody can load
        entry.write_bytes(b"written by some other JAX " * 64)
    foreign = cache / f"jit_train_step-{'0' * 64}-cache"  # a key this JAX never computes
    foreign.write_bytes(b"\x00" * 1024)
    shutil.rmtree(output_dir / "checkpoints" / str(STEPS))
    consoles["broken"] = run()
    return consoles, output_dir


@pytest.mark.slow
def test_a_restarted_run_loads_its_steps_instead_of_compiling_them(runs):
    """JAX's compile events, as the run reports them: the steps come from the cache."""
    consoles, _ = runs
    _, cold_seconds, cold_loaded = compile_summary(consoles["cold"][1])
    _, warm_seconds, warm_loaded = compile_summary(consoles["warm"][1])
    assert "Resuming from the checkpoint of step" in consoles["warm"][1]
    assert cold_loaded == 0 and warm_loaded >= 2  # the train step and the eval step at least
    assert warm_seconds <= 0.1 * cold_seconds, (warm_seconds, cold_seconds)


@pytest.mark.slow
def test_unreadable_or_foreign_cache_entries_are_ignored(runs):
    """Entries that fail to load (corrupt, or another version's bytes under a key) only warn."""
    consoles, output_dir = runs
    console = consoles["broken"][1]
    assert f"Resuming from the checkpoint of step {SAVE_STEPS}" in console
    assert "Error reading persistent compilation cache entry" in console, console[-4000:]
    assert "Traceback" not in console
    assert compile_summary(console)[2] == 0  # nothing loaded: everything compiled again
    logdir = output_dir / "logs"
    expected = train_runs.step_losses(logdir, consoles["cold"][0])
    assert train_runs.step_losses(logdir, consoles["broken"][0]) == {
        step: expected[step] for step in range(SAVE_STEPS + 1, STEPS + 1)}
    foreign = output_dir / compilation_cache.DEFAULT_DIR / f"jit_train_step-{'0' * 64}-cache"
    assert foreign.read_bytes() == b"\x00" * 1024  # left alone
