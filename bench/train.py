"""Does the training step ever wait for input? Throughput with the real pipeline vs. from memory.

Prints one JSON line: tokens/s of train.py's train step fed by the
streaming tf.data pipeline (through the same DataIterator and feed as
train.py), tokens/s of the same step fed by batches of that pipeline already
on the device, their ratio (goal >= 0.95), the pipeline's own rate with no
training, and the MFU of both against the float32 matmul rate measured in
the same run (bench/model.py's analytic FLOP count; on several local
devices, the matmul rate of one device times their number). The feeds
alternate in short rounds, and each ratio is the median over rounds, so
that load from other processes (a shared machine) hits every feed alike.

With --parallelism mesh the step is the jitted one on a mesh (--mesh_shape,
default data=-1: pure data parallelism), and the pmapped step runs in the
same rounds as its limit: mesh_vs_pmap is the mesh step's rate over the
pmapped step's, both fed from memory (goal >= 0.95: the mesh path costs
nothing), and mesh_vs_pmap_pipeline the same with both fed by the pipeline.

    python bench/train.py --config small --seconds 60
    python bench/train.py --config small --parallelism mesh --mesh_shape data=-1
"""

import argparse
import collections
import importlib.util
import json
import os
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
from pipeline import corpus, inputs, vocab  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402
from trainer import feed as feed_lib, optimizers, schedules, step as step_lib  # noqa: E402
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
    while time.perf_counter() - start < seconds:
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


def median_ratio(rates, over):
    return float(np.median([a / b for a, b in zip(rates, over)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(BENCH_MODEL.CONFIGS), default="small")
    parser.add_argument("--seconds", type=float, default=60,
                        help="time for the measured rounds (setup and compilation excluded)")
    parser.add_argument("--batch", type=int, default=8, help="examples per device")
    parser.add_argument("--round_seconds", type=float, default=1.0,
                        help="length of one round of one feed")
    parser.add_argument("--parallelism", choices=["pmap", "mesh"], default="pmap")
    parser.add_argument("--mesh_shape", default="data=-1")
    args = parser.parse_args(argv)
    tf.config.set_visible_devices([], "GPU")

    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "stdlib.txt")
        corpus.write_corpus(text)
        tokenizer = vocab.train_wordpiece([text], vocab_size=8000)
        seq_len, predictions = BENCH_MODEL.SEQ_LEN, BENCH_MODEL.MAX_PREDICTIONS
        data_config = DataConfig(train_file=text, max_seq_length=seq_len,
                                 max_predictions_per_seq=predictions)
        module, params = model.from_config(
            BENCH_MODEL.model_config(args.config, vocab_size=len(tokenizer)))

        training_args = TrainingArguments(output_dir=tmp, learning_rate=1e-4, warmup_steps=10,
                                          weight_decay=0.01)
        schedule = schedules.schedule_from_args(training_args, total_steps=100_000)
        tx = optimizers.create_optimizer(training_args, schedule)
        devices = jax.local_device_count()
        data = feed_lib.DataIterator(inputs.train_dataset(
            data_config, tokenizer, per_device_batch_size=args.batch, local_device_count=devices))
        host_batches = [next(data) for _ in range(8)]

        # Each parallelism's feed, step and state, fed by the pipeline and from memory.
        names = ["pmap"] if args.parallelism == "pmap" else ["mesh", "pmap"]
        states, runs = {}, {}
        for name in names:
            devices_feed = feed_lib.create(name, args.mesh_shape if name == "mesh" else None)
            state = devices_feed.init_state(params, tx, jax.random.PRNGKey(0))
            train_step = devices_feed.train_step(state, module.apply, tx, schedule,
                                                 step_lib.StepOptions())
            streamed = data.to_device(devices_feed.place_batch)
            state, _, _ = run_steps(train_step, state, streamed, 0)  # compile
            state, _, _ = run_steps(train_step, state, streamed, 2)  # warm up tf.data
            memory = cycle([devices_feed.place_batch(batch) for batch in host_batches])
            states[name] = state
            for source, batches in (("pipeline", streamed), ("memory", memory)):
                runs[f"{name}_{source}"] = {"parallelism": name, "step": train_step,
                                            "batches": batches, "steps": 0, "seconds": 0.0,
                                            "rates": []}

        for _ in range(max(1, round(args.seconds / (len(runs) * args.round_seconds)))):
            for run in runs.values():
                name = run["parallelism"]
                states[name], steps, elapsed = run_steps(run["step"], states[name],
                                                         run["batches"], args.round_seconds)
                run["steps"] += steps
                run["seconds"] += elapsed
                run["rates"].append(steps / elapsed)

        start, fetched = time.perf_counter(), 0
        while time.perf_counter() - start < min(5.0, args.seconds / 6):
            next(data)
            fetched += 1
        pipeline_alone = fetched / (time.perf_counter() - start)

    peak = BENCH_MODEL.matmul_flop_s(5) * devices
    tokens_per_step = args.batch * devices * seq_len
    flops_per_step = BENCH_MODEL.model_flops(module.config, args.batch * devices, gather=True)
    rates = {name: run["steps"] / run["seconds"] for name, run in runs.items()}
    chosen = names[0]
    sig = BENCH_MODEL.sig
    result = {
        "bench": "train_input_bound", "config": args.config, "seconds": args.seconds,
        "parallelism": args.parallelism, "device": jax.devices()[0].device_kind,
        "local_devices": devices, "cpu_count": os.cpu_count(), "batch_per_device": args.batch,
        "seq_len": seq_len, "steps": {name: run["steps"] for name, run in runs.items()},
        "tokens_per_s_pipeline": sig(rates[f"{chosen}_pipeline"] * tokens_per_step),
        "tokens_per_s_memory": sig(rates[f"{chosen}_memory"] * tokens_per_step),
        "ratio": sig(median_ratio(runs[f"{chosen}_pipeline"]["rates"],
                                  runs[f"{chosen}_memory"]["rates"])),
        "ratio_of_totals": sig(rates[f"{chosen}_pipeline"] / rates[f"{chosen}_memory"]),
        "goal_ratio": 0.95,
        "pipeline_alone_tokens_per_s": sig(pipeline_alone * tokens_per_step),
        "matmul_f32_flop_s": sig(peak),
        "mfu_pipeline": sig(rates[f"{chosen}_pipeline"] * flops_per_step / peak),
        "mfu_memory": sig(rates[f"{chosen}_memory"] * flops_per_step / peak),
    }
    if args.parallelism == "mesh":
        result.update({
            "mesh_shape": args.mesh_shape,
            "pmap_tokens_per_s_memory": sig(rates["pmap_memory"] * tokens_per_step),
            "pmap_tokens_per_s_pipeline": sig(rates["pmap_pipeline"] * tokens_per_step),
            "mesh_vs_pmap": sig(median_ratio(runs["mesh_memory"]["rates"],
                                             runs["pmap_memory"]["rates"])),
            "mesh_vs_pmap_pipeline": sig(median_ratio(runs["mesh_pipeline"]["rates"],
                                                      runs["pmap_pipeline"]["rates"])),
            "goal_mesh_vs_pmap": 0.95,
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
