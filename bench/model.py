"""Train-step throughput of the Flax MLM model, as a fraction of this machine's matmul rate.

Prints one JSON line: for batch x 128 tokens, the train step's (forward,
backward, AdamW update) achieved FLOP/s with the full LM head (logits at
every position) and with the masked-position head (a gather of
max_predictions positions, as original BERT), the float32 matmul FLOP/s
measured in the same run (the limit), their ratio (MFU) and the gather
head's speedup. Model FLOPs are counted analytically (matmuls only,
backward = 2x forward); XLA's own count of the compiled step is reported
beside it as a cross-check.

    python bench/model.py --config small [--dtype bfloat16] [--gather] [--batch 8]
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402

SEQ_LEN = 128
MAX_PREDICTIONS = 20
CONFIGS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--gather", action="store_true",
                        help="measure only the masked-position head (default: both heads)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    config = dict(model_type="bert", vocab_size=30522, max_position_embeddings=512,
                  **CONFIGS[args.config])
    module, params = model.from_config(config, dtype=jnp.dtype(args.dtype))
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
