"""Checkpoints: exact resume of state and input position, across meshes and pmap; keep-N,
the output_dir guard, signals."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from trainer import checkpoints, feed, run_dir, stopping, writer_priority
from trainer import mesh as mesh_lib
from trainer import step as step_lib


def shuffled_batches():
    """A small stateful-looking pipeline (shuffle buffer, map, prefetch) of host batches."""
    ds = tf.data.Dataset.range(10_000).shuffle(64, seed=3)
    ds = ds.batch(16, drop_remainder=True).map(lambda x: {"x": x})  # 2 per device of 8
    return ds.prefetch(2)


def host_values(device_batches, count):
    return [np.asarray(next(device_batches)["x"]) for _ in range(count)]


def make_state(scale=1.0, shape=(3, 4)):
    return {"params": {"w": np.full(shape, scale, np.float32)},
            "step": np.asarray(7, np.int32), "rng": np.asarray([1, 2], np.uint32)}


def test_round_trip_restores_state_and_next_batches(tmp_path):
    place = feed.PmapFeed().place_batch
    data = feed.DataIterator(shuffled_batches())
    batches = data.to_device(place)
    host_values(batches, 5)
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.save(5, make_state(2.0), data, wait=True)
    expected = host_values(batches, 6)
    ckpt.close()

    resumed = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    assert ckpt.latest_step == 5
    state = ckpt.restore(make_state(0.0), resumed)
    ckpt.close()
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 4), 2.0))
    assert state["step"] == 7 and state["rng"].tolist() == [1, 2]
    got = host_values(resumed.to_device(place), 6)
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_input_position_is_taken_at_save_and_written_in_the_background(tmp_path, monkeypatch):
    """save() returns before the input state is written; the step commits only once it is."""
    release = threading.Event()
    write_files = checkpoints._write_files  # pylint: disable=protected-access

    def held_write(directory, files):  # a slow bucket: the write waits until released
        assert release.wait(60)
        write_files(directory, files)

    monkeypatch.setattr(checkpoints, "_write_files", held_write)
    place = feed.PmapFeed().place_batch
    data = feed.DataIterator(shuffled_batches())
    batches = data.to_device(place)
    host_values(batches, 5)
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.save(5, make_state(2.0), data)
    try:
        assert ckpt.saving()
        expected = host_values(batches, 6)  # the iterator moves on while the write waits
        assert ocp.path.step.checkpoint_steps(ckpt.directory) == []  # not committed yet
    finally:
        release.set()
    ckpt.wait()
    assert ocp.path.step.checkpoint_steps(ckpt.directory) == [5]
    ckpt.close()

    resumed = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.restore(make_state(0.0), resumed)
    ckpt.close()
    got = host_values(resumed.to_device(place), 6)
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority: Linux")
def test_background_writers_run_at_the_lowest_priority_and_the_loop_does_not(tmp_path):
    main_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    for step in (1, 2):
        ckpt.save(step, make_state(float(step), shape=(256, 256)), data)
    ckpt.close()
    writers = writer_priority.writer_threads()
    assert writers, "no TensorStore worker threads found: has TensorStore renamed them?"
    assert {os.getpriority(os.PRIO_PROCESS, t) for t in writers} == {19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_priority


def test_keeps_the_last_n_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output_dir, as users write it
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints("run", save_total_limit=2)
    state = make_state()
    for step in (1, 2, 3, 4):
        ckpt.save(step, state, data)
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "run" / run_dir.CHECKPOINT_DIR)) == ["3", "4"]


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.save(1, make_state(), data, wait=True)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="params/w has shape \\(3, 4\\)"):
        ckpt.restore(make_state(shape=(3, 5)), data)
    other = {"params": {"v": np.zeros(2, np.float32)}, "step": np.int32(0),
             "rng": np.zeros(2, np.uint32)}
    with pytest.raises(checkpoints.CheckpointMismatchError, match="has no params/v"):
        ckpt.restore(other, data)
    ckpt.close()


def train_state():
    """A TrainState of a small model's shapes (one dimension fsdp=4 divides, one it does not)."""
    params = {"dense": {"kernel": np.arange(24, dtype=np.float32).reshape(8, 3),
                        "bias": np.arange(3, dtype=np.float32)}}
    return step_lib.create_train_state(params, optax.adam(0.1), jax.random.PRNGKey(4))


def assert_same_state(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_resumed_run_restores_into_shapes_alone(tmp_path):
    """feed.state_shapes (nothing initialised) is a restore target for pmap and a mesh."""
    host = jax.device_get(train_state())
    pmap = feed.PmapFeed()
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.save(1, pmap.saveable(pmap.place_state(host)), data, wait=True)
    shapes = feed.state_shapes(jax.eval_shape(lambda: host.params), optax.adam(0.1),
                               jax.random.PRNGKey(0))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    fsdp8 = feed.MeshFeed(mesh_lib.create_mesh({"data": 1, "fsdp": 8}))
    for layout in (pmap, fsdp8):
        assert_same_state(ckpt.restore(layout.restore_target(shapes), data), host)
    ckpt.close()


def test_state_restores_across_meshes_and_pmap(tmp_path):
    """Sharded (data=2,fsdp=4) -> host arrays (pmap) and a 4-device mesh; host -> fsdp=8."""
    host = jax.device_get(train_state())
    fsdp4 = feed.MeshFeed(mesh_lib.create_mesh({"data": 2, "fsdp": 4}))
    state = fsdp4.place_state(host)
    kernel = state.params["dense"]["kernel"]
    assert {s.data.shape for s in kernel.addressable_shards} == {(2, 3)}  # split along 8
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path / "mesh")
    ckpt.save(1, fsdp4.saveable(state), data, wait=True)

    pmap = feed.PmapFeed()
    as_host = ckpt.restore(pmap.restore_target(host), data)
    assert isinstance(as_host.params["dense"]["kernel"], np.ndarray)
    assert_same_state(as_host, host)
    four = feed.MeshFeed(mesh_lib.create_mesh({"data": 4, "fsdp": 1}, jax.devices()[:4]))
    on_four = ckpt.restore(four.restore_target(host), data)
    assert on_four.params["dense"]["kernel"].sharding == four.shardings(on_four).params[
        "dense"]["kernel"]
    assert_same_state(on_four, host)
    ckpt.close()

    ckpt = checkpoints.Checkpoints(tmp_path / "pmap")
    ckpt.save(1, pmap.saveable(pmap.place_state(host)), data, wait=True)
    fsdp8 = feed.MeshFeed(mesh_lib.create_mesh({"data": 1, "fsdp": 8}))
    target = fsdp8.restore_target(host)
    on_eight = ckpt.restore(target, data)
    ckpt.close()
    assert {s.data.shape for s in on_eight.params["dense"]["kernel"].addressable_shards} == {
        (1, 3)}
    assert_same_state(on_eight, host)


def test_another_host_batch_is_refused_naming_the_global_batch_to_keep(tmp_path):
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints(tmp_path)
    ckpt.save(1, make_state(), data, wait=True)
    halves = feed.DataIterator(shuffled_batches().unbatch().batch(8, drop_remainder=True))
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match="batches of 16 examples per process, this run's have 8.*"
                             "--global_train_batch_size 16$"):
        ckpt.restore(make_state(), halves)
    ckpt.close()


def snapshot(path):
    return {p: (os.path.getsize(p), os.path.getmtime(p))
            for p in (os.path.join(root, f) for root, _, files in os.walk(path) for f in files)}


@pytest.mark.parametrize("remote", [False, True])
def test_local_files_reach_the_output_dir(tmp_path, remote):
    """A remote output_dir (TensorFlow's in-memory ram:// standing in for gs://) gets copies."""
    output_dir = f"ram://{tmp_path.name}/run" if remote else str(tmp_path / "run")
    with run_dir.local_files(output_dir) as directory:
        assert "://" not in directory and os.path.isdir(directory)
        with open(os.path.join(directory, "config.json"), "w") as f:
            f.write('{"a": 1}')
        os.mkdir(os.path.join(directory, "sub"))
        with open(os.path.join(directory, "sub", "weights.bin"), "wb") as f:
            f.write(bytes(range(256)))
    with tf.io.gfile.GFile(f"{output_dir}/config.json") as f:
        assert f.read() == '{"a": 1}'
    with tf.io.gfile.GFile(f"{output_dir}/sub/weights.bin", "rb") as f:
        assert f.read() == bytes(range(256))
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(output_dir)) == [
        "config.json", "sub"]


def test_output_dir_guard(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = snapshot(foreign)
    with pytest.raises(run_dir.OutputDirError, match="notes.txt.*--overwrite_output_dir"):
        run_dir.check_output_dir(foreign, overwrite=False)
    assert snapshot(foreign) == before and os.listdir(foreign) == ["notes.txt"]

    fresh = tmp_path / "fresh"
    assert run_dir.check_output_dir(fresh, overwrite=False) is False
    assert not fresh.exists()  # checking writes nothing
    run_dir.claim_output_dir(fresh, overwrite=False, run_args={"a": 1})
    assert json.loads((fresh / run_dir.RUN_MARKER).read_text()) == {"a": 1}
    (fresh / run_dir.CHECKPOINT_DIR).mkdir()
    assert run_dir.check_output_dir(fresh, overwrite=False) is True

    # Overwrite starts afresh: our checkpoints go, other files stay.
    assert run_dir.check_output_dir(fresh, overwrite=True) is False
    run_dir.claim_output_dir(fresh, overwrite=True, run_args={})
    assert not (fresh / run_dir.CHECKPOINT_DIR).exists()
    assert run_dir.check_output_dir(foreign, overwrite=True) is False
    run_dir.claim_output_dir(foreign, overwrite=True, run_args={})
    assert (foreign / "notes.txt").read_text() == "mine"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(run_dir.OutputDirError, match="is a file"):
        run_dir.check_output_dir(a_file, overwrite=True)


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_checkpoints import shuffled_batches
    from trainer import checkpoints, feed
    data = feed.DataIterator(shuffled_batches())
    ckpt = checkpoints.Checkpoints({out!r})
    small = {{"w": np.ones(4, np.float32)}}
    ckpt.save(1, small, data, wait=True)
    big = {{"w": np.ones(4, np.float32), "big": np.ones(25_000_000, np.float32)}}
    ckpt.save(2, big, data)  # async: returns while writing
    names = os.listdir(os.path.join({out!r}, "checkpoints"))
    print("during save:", sorted(names), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = KILL_DURING_SAVE.format(root=root, out=str(tmp_path))
    from train_runs import xla_flags  # here: the script imports this module, without tests/
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "orbax-checkpoint-tmp" in result.stdout, result.stdout  # killed mid-write

    ckpt = checkpoints.Checkpoints(tmp_path)
    assert ckpt.latest_step == 1
    data = feed.DataIterator(shuffled_batches())
    state = ckpt.restore({"w": np.zeros(4, np.float32)}, data)
    ckpt.close()
    np.testing.assert_array_equal(state["w"], np.ones(4))


def test_stop_request_turns_signals_into_a_flag():
    stop = stopping.StopRequest()
    try:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested(2) and stop.name == "SIGTERM"
        assert stop.exit_code() == 128 + signal.SIGTERM
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_orbax_write_tasks_nobody_awaited_are_not_logged(tmp_path):
    """A full disk fails many of Orbax's write tasks; the run's one error line reports it."""
    checkpoints.Checkpoints(tmp_path / "run").close()  # installs the console filters
    asyncio_logger = logging.getLogger("asyncio")

    def logged(message):
        return asyncio_logger.filter(asyncio_logger.makeRecord(
            "asyncio", logging.ERROR, __file__, 1, message, None, None))

    orbax_task = os.path.join(os.sep, "venv", "orbax", "checkpoint", "type_handlers.py")
    assert not logged("Task exception was never retrieved\nfuture: <Task finished "
                      f"coro=<NumpyHandler._open_and_write() defined at {orbax_task}:114>>")
    assert not logged("Future exception was never retrieved\nfuture: <Future finished>")
    assert logged("Task exception was never retrieved\nfuture: <Task finished "
                  f"coro=<mine() defined at {os.path.join(os.sep, 'app', 'x.py')}:1>>")
