"""Train-step throughput of the Flax MLM model, as a fraction of this machine's matmul rate;
or, with --mesh_shape, the step's memory per device on a mesh.

Prints one JSON line: for batch x 128 tokens, the train step's (forward,
backward, AdamW update) achieved FLOP/s with the full LM head (logits at
every position) and with the masked-position head (a gather of
max_predictions positions, as original BERT), the float32 matmul FLOP/s
measured in the same run (the limit), their ratio (MFU) and the gather
head's speedup. Model FLOPs are counted analytically (matmuls only,
backward = 2x forward); XLA's own count of the compiled step is reported
beside it as a cross-check.

    python bench/model.py --config small [--dtype bfloat16] [--gather] [--batch 8]

With --mesh_shape (one or more), nothing runs: train.py's mesh step (AdamW,
gather head, dropout) is compiled ahead of time against abstract inputs for
--devices simulated CPU devices, at sequence length 512, and XLA's memory
analysis gives each device's bytes: parameters and optimizer state (their
shards), and the temporaries (activations, gradients, everything else the
step allocates). The limit each mesh is compared with is the first one's
(normally fsdp=1: every device holding the whole state).

    python bench/model.py --config large --mesh_shape fsdp=1 fsdp=2 fsdp=4 fsdp=8
    python bench/model.py --config xl --devices 64 --mesh_shape data=8,fsdp=8 fsdp=64
"""

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402
from model import build as model_build, configuration  # noqa: E402
from trainer import feed, optimizers, schedules  # noqa: E402
from trainer import mesh as mesh_lib, step as step_lib  # noqa: E402
from trainer.args import TrainingArguments  # noqa: E402

SEQ_LEN = 128
MAX_PREDICTIONS = 20
CONFIGS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096),
    # XLM-R XL's shape (3.5 B parameters, most of them its 250k-token embedding).
    "xl": dict(model_type="xlm-roberta", vocab_size=250002, max_position_embeddings=514,
               hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
               intermediate_size=10240, pad_token_id=1),
}
MEMORY_SEQ_LEN, MEMORY_PREDICTIONS = 512, 80  # BERT's phase-2 pretraining shape


def model_config(name, **overrides):
    """The named config as a dict for model.from_config: BERT with its 30522-token vocabulary
    unless the config says otherwise."""
    return {"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 512,
            **CONFIGS[name], **overrides}


def model_flops(config, batch, gather):
    """Analytic matmul FLOPs of one train step (3x the forward pass)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * SEQ_LEN
    per_token_layer = 2 * (4 * h * h + 2 * h * inter) + 2 * 2 * SEQ_LEN * h
    head_positions = batch * MAX_PREDICTIONS if gather else tokens
    head = head_positions * 2 * (h * h + h * config.vocab_size)
    return 3 * (tokens * layers * per_token_layer + head)


def sig(x):
    return float(f"{x:.4g}")


def median_seconds(fn, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_flop_s(steps, n=1024):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ a)
    jax.block_until_ready(matmul(a))
    return 2 * n ** 3 / median_seconds(lambda: matmul(a), max(steps, 5))


def make_batch(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, (batch, SEQ_LEN)).astype(np.int32)
    positions = np.sort(rng.permuted(np.tile(np.arange(1, SEQ_LEN), (batch, 1)), axis=1)
                        [:, :MAX_PREDICTIONS], axis=1).astype(np.int32)
    labels = np.full_like(ids, -100)
    np.put_along_axis(labels, positions, np.take_along_axis(ids, positions, 1), 1)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
            "masked_positions": positions, "masked_ids": np.take_along_axis(ids, positions, 1)}


def make_train_step(module, optimizer, gather):
    def loss_fn(params, batch, rng):
        kwargs = {"masked_positions": batch["masked_positions"]} if gather else {}
        logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                              deterministic=False, rngs={"dropout": rng}, **kwargs)
        targets = batch["masked_ids"] if gather else batch["labels"]
        weights = (targets != -100).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.maximum(targets, 0))
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def step(params, opt_state, batch, rng):
        grads = jax.grad(loss_fn)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def measure(module, params, batch, gather, steps):
    optimizer = optax.adamw(1e-4, weight_decay=0.01)
    state = [params, optimizer.init(params)]
    step = make_train_step(module, optimizer, gather)
    rng = jax.random.key(1)
    compiled = step.lower(*state, batch, rng).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    def run():
        state[:] = step(*state, batch, rng)
        return state[0]

    jax.block_until_ready(run())
    seconds = median_seconds(run, steps)
    flops = model_flops(module.config, len(batch["input_ids"]), gather)
    return {"step_s": sig(seconds), "model_flops": flops,
            "xla_flops": sig(cost.get("flops", float("nan"))), "flop_s": sig(flops / seconds)}


def shard_bytes(tree, shardings):
    """Bytes of one device's shards of an abstract tree under its shardings."""
    return sum(math.prod(sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def mesh_memory(config_name, mesh_shapes, batch, dtype):
    """Per-device bytes of train.py's mesh step for each mesh shape, compiled, never run."""
    module = model_build.build(configuration.load_config(model_config(config_name)), dtype)
    params = model_build.param_shapes(module)
    training_args = TrainingArguments(output_dir="unused", learning_rate=1e-4,
                                      weight_decay=0.01, warmup_steps=10)
    schedule = schedules.schedule_from_args(training_args, total_steps=1000)
    tx = optimizers.create_optimizer(training_args, schedule)
    state = jax.eval_shape(
        lambda p: step_lib.create_train_state(p, tx, jax.random.PRNGKey(0)), params)
    widths = {"input_ids": MEMORY_SEQ_LEN, "attention_mask": MEMORY_SEQ_LEN,
              "token_type_ids": MEMORY_SEQ_LEN, "masked_positions": MEMORY_PREDICTIONS,
              "masked_ids": MEMORY_PREDICTIONS, "masked_weights": MEMORY_PREDICTIONS}
    inputs = {key: jax.ShapeDtypeStruct((batch * jax.device_count(), width),
                                        jnp.float32 if key == "masked_weights" else jnp.int32)
              for key, width in widths.items()}
    rows = []
    for text in mesh_shapes:
        sizes = mesh_lib.resolve_mesh_shape(text, jax.device_count())
        devices = feed.MeshFeed(mesh_lib.create_mesh(sizes))
        train_step = devices.train_step(state, module.apply, tx, schedule,
                                        step_lib.StepOptions())
        start = time.perf_counter()
        stats = train_step.lower(state, inputs).compile().memory_analysis()
        shardings = devices.shardings(state)
        row = {"mesh": ",".join(f"{axis}={size}" for axis, size in sizes.items()),
               "params_bytes": shard_bytes(state.params, shardings.params),
               "opt_state_bytes": shard_bytes(state.opt_state, shardings.opt_state),
               "temp_bytes": stats.temp_size_in_bytes,
               "xla_argument_bytes": stats.argument_size_in_bytes,
               "xla_output_bytes": stats.output_size_in_bytes,
               "xla_alias_bytes": stats.alias_size_in_bytes,
               "compile_s": sig(time.perf_counter() - start)}
        # Peak estimate: inputs, plus outputs not written over donated inputs, plus temporaries.
        row["total_bytes"] = (row["xla_argument_bytes"] + row["xla_output_bytes"]
                              - row["xla_alias_bytes"] + row["temp_bytes"])
        rows.append(row)
    first = rows[0]
    for row in rows:
        row["state_vs_first"] = sig((row["params_bytes"] + row["opt_state_bytes"])
                                    / (first["params_bytes"] + first["opt_state_bytes"]))
        row["total_vs_first"] = sig(row["total_bytes"] / first["total_bytes"])
    return {"bench": "model_memory_per_device", "config": config_name, "dtype": dtype.name,
            "devices": jax.device_count(), "batch_per_device": batch,
            "seq_len": MEMORY_SEQ_LEN, "max_predictions": MEMORY_PREDICTIONS,
            "parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
            "optimizer": "adamw", "compiled_for": jax.devices()[0].platform,
            "limit": f"the first mesh ({first['mesh']})", "meshes": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--gather", action="store_true",
                        help="measure only the masked-position head (default: both heads)")
    parser.add_argument("--batch", type=int, default=8, help="examples (per device on a mesh)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mesh_shape", nargs="+",
                        help="memory per device of the mesh step on each of these meshes "
                             "(e.g. fsdp=1 fsdp=8); nothing runs")
    parser.add_argument("--devices", type=int,
                        help="simulated CPU devices for --mesh_shape (default: this machine's)")
    args = parser.parse_args(argv)

    if args.mesh_shape:
        if args.devices:
            jax.config.update("jax_num_cpu_devices", args.devices)
            jax.config.update("jax_platforms", "cpu")
        print(json.dumps(mesh_memory(args.config, args.mesh_shape, args.batch,
                                     jnp.dtype(args.dtype))))
        return
    module, params = model.from_config(model_config(args.config), dtype=jnp.dtype(args.dtype))
    batch = jax.device_put(make_batch(module.config, args.batch))
    peak = matmul_flop_s(args.steps)
    heads = ["gather"] if args.gather else ["full", "gather"]
    result = {"bench": "model_train_step", "config": args.config, "dtype": args.dtype,
              "batch": args.batch, "seq_len": SEQ_LEN, "max_predictions": MAX_PREDICTIONS,
              "steps": args.steps, "flops_count": "analytic matmuls, train = 3x forward",
              "device": jax.devices()[0].device_kind, "matmul_f32_flop_s": sig(peak)}
    for head in heads:
        copy = jax.tree.map(jnp.copy, params)
        result[head] = measure(module, copy, batch, head == "gather", args.steps)
        result[head]["mfu"] = sig(result[head]["flop_s"] / peak)
    if not args.gather:
        result["gather_step_speedup"] = sig(result["full"]["step_s"] / result["gather"]["step_s"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
