"""Does the training step ever wait for input? Throughput with the real pipeline vs. from memory.

Prints one JSON line: tokens/s of train.py's train step fed by the
streaming tf.data pipeline (through the same DataIterator and feed as
train.py), tokens/s of the same step fed by batches of that
pipeline already on the device, their ratio (goal >= 0.95), the pipeline's
own rate with no training, and the MFU of both against the float32 matmul
rate measured in the same run (bench/model.py's analytic FLOP count; on
several local devices, the matmul rate of one device times their number).
The two feeds alternate in short rounds, and the ratio is the median over
pairs of rounds, so that load from other processes (a shared machine) hits
both feeds alike.

    python bench/train.py --config small --seconds 60

With --save_steps N it measures instead whether asynchronous checkpoints
stall training: the same step on batches in memory, each step waited for
and timed, saving the train state and input position every N steps with
train.py's Checkpoints (to --save_dir, a temporary directory by default, or
with --gcs_emulator to gs:// on tests/gcs_emulator.py's fake-gcs-server;
TensorStore's array data goes to the server directly, not through the
fault-injecting proxy, whose Python relay would take CPU a bucket does not).
It reports the median time of the steps no save overlaps, the times of the
steps that run while a save is written and their largest ratio to the median
(goal <= 1.5); the save() call, timed apart (the synchronous copy to host
memory), in seconds and in median steps; and what saving costs the run in all.
The largest ratio among the steps no save overlaps shows the machine's noise.

    python bench/train.py --config small --save_steps 20 --seconds 60
    python bench/train.py --config small --save_steps 20 --seconds 60 --gcs_emulator

With --parallelism mesh (and --mesh_shape, default data=-1: pure data
parallelism) the step is train.py's jitted mesh step, and the pmapped step
runs in the same rounds as its limit: mesh_vs_pmap is the median over rounds
of the mesh step's rate over the pmapped step's, both fed from memory (goal
>= 0.95: the mesh path costs nothing).

    python bench/train.py --config small --parallelism mesh --mesh_shape data=-1
"""

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model  # noqa: E402
import train  # noqa: E402
from pipeline import corpus, inputs, tokenizer_training  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402
from trainer import checkpoints, feed as feed_lib, optimizers, schedules  # noqa: E402
from trainer import step as step_lib  # noqa: E402
from trainer.args import TrainingArguments  # noqa: E402


def _bench_model():
    """bench/model.py (model configs, analytic FLOPs, matmul rate), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "bench_model", os.path.join(ROOT, "bench", "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH_MODEL = _bench_model()


def run_steps(p_train_step, state, batches, seconds):
    """Steps until `seconds` have passed; returns (state, steps, elapsed) with the work done.

    Like train.py, at most MAX_STEPS_IN_FLIGHT steps are dispatched ahead.
    """
    steps, start, in_flight = 0, time.perf_counter(), collections.deque()
    while not steps or time.perf_counter() - start < seconds:  # one step at least
        state, metrics = p_train_step(state, next(batches))
        in_flight.append(metrics)
        if len(in_flight) > train.MAX_STEPS_IN_FLIGHT:
            jax.block_until_ready(in_flight.popleft())
        steps += 1
    jax.block_until_ready(state)
    return state, steps, time.perf_counter() - start


def cycle(items):
    while True:
        yield from items


def timed_saves(devices_feed, p_train_step, state, batches, data, save_dir, save_steps, seconds):
    """Steps (each waited for) for `seconds`, saving asynchronously every save_steps steps.

    Returns the state, [(seconds, overlapped a save)] per step, and the seconds of each
    save() call, timed apart from the steps: the call is the synchronous part of a
    save (the copy to host memory and the input position), the steps after it run
    while the save is written. Once `seconds` have passed no save starts, and the
    steps go on until the last one is written (a save longer than save_steps steps
    would otherwise go on for ever).
    """
    ckpt = checkpoints.Checkpoints(save_dir, save_total_limit=2)
    steps, save_calls, step, start = [], [], 0, time.perf_counter()
    while (in_time := time.perf_counter() - start < seconds) or ckpt.saving():
        began = time.perf_counter()
        overlapped = ckpt.saving()
        state, metrics = p_train_step(state, next(batches))
        jax.block_until_ready(metrics)
        steps.append((time.perf_counter() - began, overlapped or ckpt.saving()))
        step += 1
        if in_time and step % save_steps == 0:
            called = time.perf_counter()
            ckpt.save(step, devices_feed.saveable(state), data)
            save_calls.append(time.perf_counter() - called)
    ckpt.close()
    return state, steps, save_calls


def state_bytes(devices_feed, state) -> int:
    """Bytes of one whole copy of the train state, as a checkpoint holds it."""
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(devices_feed.to_host(state)))


def save_stall_figures(steps, save_calls, state_size, save_steps):
    """The JSON figures of timed_saves: overlapping steps against the median step.

    save_cost is what saving costs the whole run: the time of all steps and
    save() calls over that of as many median steps, less one.
    """
    free = [t for t, overlapped in steps if not overlapped]
    busy = [t for t, overlapped in steps if overlapped]
    median = float(np.median(free))
    save_call = float(np.median(save_calls)) if save_calls else None
    sig = BENCH_MODEL.sig
    return {
        "save_steps": save_steps, "state_mb": sig(state_size / 2**20),
        "steps": len(steps), "saves": len(save_calls),
        "median_step_s": sig(median),
        "overlapping_steps_s": [sig(t) for t in busy],
        "save_call_s": sig(save_call) if save_calls else None,
        "save_call_steps": sig(save_call / median) if save_calls else None,
        "max_overlap_ratio": sig(max(busy) / median) if busy else None,
        "max_free_ratio": sig(max(free) / median),  # the noise: steps no save overlaps
        "median_overlap_ratio": sig(float(np.median(busy)) / median) if busy else None,
        "save_cost": sig((sum(t for t, _ in steps) + sum(save_calls)) / (len(steps) * median)
                         - 1),
        "goal_ratio": 1.5,
        "ok": bool(busy) and max(busy) / median <= 1.5,
    }


def run_with_gcs_emulator(argv):
    """Runs this bench again in a process whose gs:// traffic goes to a local fake-gcs-server."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from gcs_emulator import GcsEmulator  # pylint: disable=import-outside-toplevel

    argv = [a for a in argv if a != "--gcs_emulator"] + ["--save_dir", "gs://bench/run"]
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "buckets", "bench"))
        emulator = GcsEmulator(tmp, os.path.join(tmp, "buckets"))
        try:
            # TensorStore's array data straight to the emulator: the proxy (Python, for
            # faults and TensorFlow's TLS) would take CPU a remote bucket does not.
            result = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv,
                                    env=emulator.environment(tensorstore_direct=True),
                                    check=False)
        finally:
            emulator.close()
    sys.exit(result.returncode)


def state_and_step(devices_feed, module, params, tx, schedule):
    """(state, train step) laid out by a feed, as train.py makes them."""
    state = devices_feed.init_state(params, tx, jax.random.PRNGKey(0))
    return state, devices_feed.train_step(state, module.apply, tx, schedule,
                                          step_lib.StepOptions())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(BENCH_MODEL.CONFIGS), default="small")
    parser.add_argument("--seconds", type=float, default=60,
                        help="time for the measured rounds (setup and compilation excluded)")
    parser.add_argument("--batch", type=int, default=8, help="examples per device")
    parser.add_argument("--round_seconds", type=float, default=1.0,
                        help="length of one round of one feed")
    parser.add_argument("--save_steps", type=int, default=0,
                        help="measure steps that overlap an asynchronous save every N steps")
    parser.add_argument("--save_dir", default=None,
                        help="where --save_steps saves (default: a temporary directory)")
    parser.add_argument("--gcs_emulator", action="store_true",
                        help="with --save_steps: save to gs:// on a local fake-gcs-server")
    parser.add_argument("--parallelism", choices=["pmap", "mesh"], default="pmap")
    parser.add_argument("--mesh_shape", default="data=-1")
    return parser.parse_args(argv)


def set_up(args, tmp):
    """(module, params, tx, schedule, feed, DataIterator): the model and its streamed data."""
    text = os.path.join(tmp, "stdlib.txt")
    corpus.write_corpus(text)
    tokenizer = tokenizer_training.train_wordpiece([text], vocab_size=8000)
    data_config = DataConfig(train_file=text, max_seq_length=BENCH_MODEL.SEQ_LEN,
                             max_predictions_per_seq=BENCH_MODEL.MAX_PREDICTIONS)
    module, params = model.from_config(
        BENCH_MODEL.model_config(args.config, vocab_size=len(tokenizer)))
    training_args = TrainingArguments(output_dir=tmp, learning_rate=1e-4, warmup_steps=10,
                                      weight_decay=0.01)
    schedule = schedules.schedule_from_args(training_args, total_steps=100_000)
    tx = optimizers.create_optimizer(training_args, schedule)
    devices_feed = feed_lib.create(args.parallelism, args.mesh_shape)
    data = feed_lib.DataIterator(inputs.train_dataset(
        data_config, tokenizer, per_device_batch_size=args.batch,
        local_device_count=jax.local_device_count()))
    return module, params, tx, schedule, devices_feed, data


def pmap_rival(module, params, tx, schedule, host_batches):
    """(step, state, batches in memory) of the pmapped step, compiled: the mesh step's limit."""
    pmap = feed_lib.PmapFeed()
    state, p_train_step = state_and_step(pmap, module, params, tx, schedule)
    memory = cycle([pmap.place_batch(batch) for batch in host_batches])
    state, _, _ = run_steps(p_train_step, state, memory, 0)  # compile
    return p_train_step, state, memory


def alternate_rounds(args, p_train_step, state, streamed, memory, rival=None):
    """Short rounds of the streamed and the in-memory feed (and of the pmapped rival), in turn.

    Returns {feed: [steps, seconds]}, the pipeline/memory rate ratio of each
    pair of rounds, and the mesh/pmap ratio of each round (with a rival).
    """
    totals = {"pipeline": [0, 0.0], "memory": [0, 0.0]}
    if rival:
        rival_step, rival_state, rival_memory = rival
        totals["pmap_memory"] = [0, 0.0]
    pair_ratios, mesh_ratios = [], []
    for _ in range(max(1, round(args.seconds / (len(totals) * args.round_seconds)))):
        rate = {}
        for name, batches in (("pipeline", streamed), ("memory", memory)):
            state, steps, elapsed = run_steps(p_train_step, state, batches,
                                              args.round_seconds)
            totals[name][0] += steps
            totals[name][1] += elapsed
            rate[name] = steps / elapsed
        pair_ratios.append(rate["pipeline"] / rate["memory"])
        if rival:
            rival_state, steps, elapsed = run_steps(rival_step, rival_state, rival_memory,
                                                    args.round_seconds)
            totals["pmap_memory"][0] += steps
            totals["pmap_memory"][1] += elapsed
            mesh_ratios.append(rate["memory"] / (steps / elapsed))
    return totals, pair_ratios, mesh_ratios


def pipeline_alone(data, seconds):
    """Host batches per second that the pipeline yields with no training."""
    start, fetched = time.perf_counter(), 0
    while time.perf_counter() - start < min(5.0, seconds / 6):
        next(data)
        fetched += 1
    return fetched / (time.perf_counter() - start)


def input_bound_figures(args, module, devices_feed, totals, pair_ratios, mesh_ratios,
                        alone):
    """The JSON figures of the input-bound measurement."""
    devices, seq_len = jax.local_device_count(), BENCH_MODEL.SEQ_LEN
    peak = BENCH_MODEL.matmul_flop_s(5) * devices
    tokens_per_step = args.batch * devices * seq_len
    flops_per_step = BENCH_MODEL.model_flops(module.config, args.batch * devices, gather=True)
    rates = {name: steps / elapsed for name, (steps, elapsed) in totals.items()}
    sig = BENCH_MODEL.sig
    mesh = {} if args.parallelism == "pmap" else {
        "mesh": devices_feed.description,
        "pmap_tokens_per_s_memory": sig(rates["pmap_memory"] * tokens_per_step),
        "mesh_vs_pmap": sig(float(np.median(mesh_ratios))), "goal_mesh_vs_pmap": 0.95}
    return {
        "bench": "train_input_bound", "config": args.config, "seconds": args.seconds,
        "parallelism": args.parallelism, "device": jax.devices()[0].device_kind,
        "local_devices": devices,
        "cpu_count": os.cpu_count(), "batch_per_device": args.batch, "seq_len": seq_len,
        "steps": {name: steps for name, (steps, _) in totals.items()},
        "tokens_per_s_pipeline": sig(rates["pipeline"] * tokens_per_step),
        "tokens_per_s_memory": sig(rates["memory"] * tokens_per_step),
        "ratio": sig(float(np.median(pair_ratios))),
        "ratio_of_totals": sig(rates["pipeline"] / rates["memory"]),
        "goal_ratio": 0.95,
        "pipeline_alone_tokens_per_s": sig(alone * tokens_per_step),
        "matmul_f32_flop_s": sig(peak),
        "mfu_pipeline": sig(rates["pipeline"] * flops_per_step / peak),
        "mfu_memory": sig(rates["memory"] * flops_per_step / peak),
        **mesh,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.gcs_emulator:
        run_with_gcs_emulator(sys.argv[1:] if argv is None else argv)
    tf.config.set_visible_devices([], "GPU")

    with tempfile.TemporaryDirectory() as tmp:
        module, params, tx, schedule, devices_feed, data = set_up(args, tmp)
        state, p_train_step = state_and_step(devices_feed, module, params, tx, schedule)
        streamed = data.to_device(devices_feed.place_batch)
        state, _, _ = run_steps(p_train_step, state, streamed, 0)  # compile
        state, _, _ = run_steps(p_train_step, state, streamed, 2)  # warm up tf.data

        host_batches = [next(data) for _ in range(8)]
        memory = cycle([devices_feed.place_batch(batch) for batch in host_batches])
        if args.save_steps:
            state, steps, save_calls = timed_saves(
                devices_feed, p_train_step, state, memory, data,
                args.save_dir or os.path.join(tmp, "run"), args.save_steps, args.seconds)
            print(json.dumps({
                "bench": "train_save_stall", "config": args.config,
                "save_dir": "gs (emulator)" if str(args.save_dir).startswith("gs://")
                else "local", "cpu_count": os.cpu_count(),
                "local_devices": jax.local_device_count(),
                **save_stall_figures(steps, save_calls, state_bytes(devices_feed, state),
                                     args.save_steps)}))
            return
        rival = (pmap_rival(module, params, tx, schedule, host_batches)
                 if args.parallelism == "mesh" else None)  # the pmapped step, the same rounds
        totals, pair_ratios, mesh_ratios = alternate_rounds(args, p_train_step, state, streamed,
                                                            memory, rival)
        alone = pipeline_alone(data, args.seconds)
    print(json.dumps(input_bound_figures(args, module, devices_feed, totals, pair_ratios,
                                         mesh_ratios, alone)))


if __name__ == "__main__":
    main()
