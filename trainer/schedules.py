"""Learning-rate schedules written as products of named factors.

The factor strings are those of flax's lm1b/wmt examples, e.g.
"constant * linear_warmup * rsqrt_decay", plus linear_decay, so that
run_mlm_flax.py's schedule (linear warmup, then linear decay to zero at the
last step) is "constant * linear_warmup * linear_decay", our default.

Factors at optimizer step s, with w = warmup_steps and T = total_steps:
  constant                base_learning_rate
  linear_warmup           min(1, s / w)                       (1 when w = 0)
  rsqrt_decay             1 / sqrt(max(s, w, 1))
  rsqrt_normalized_decay  sqrt(max(w, 1)) / sqrt(max(s, w, 1)) (1 until the end of warmup)
  decay_every             decay_factor ** (s // steps_per_decay)
  cosine_decay            0.5 * (1 + cos(pi * (p % 1))), p = max(0, s - w) / steps_per_cycle
  linear_decay            max(0, (T - max(s, w)) / (T - w))   (1 until the end of warmup)
"rsqrt_decay" keeps flax's convention (the peak is base / sqrt(w)); use
"rsqrt_normalized_decay" for a peak of base_learning_rate. The max(., 1)
guards only matter when warmup_steps is 0, where the flax formulas divide by zero.
"""

import jax.numpy as jnp

from pipeline.errors import UserError


def _factor_functions(base_learning_rate, warmup_steps, total_steps, decay_factor,
                      steps_per_decay, steps_per_cycle):
    """Each factor as a function of the (float) step."""
    w = float(warmup_steps)
    decay_span = float(max(total_steps - warmup_steps, 1))
    return {
        "constant": lambda s: jnp.float32(base_learning_rate),
        "linear_warmup": (lambda s: jnp.minimum(1.0, s / w)) if w > 0 else (lambda s: 1.0),
        "rsqrt_decay": lambda s: jnp.reciprocal(jnp.sqrt(jnp.maximum(s, max(w, 1.0)))),
        "rsqrt_normalized_decay":
            lambda s: jnp.sqrt(max(w, 1.0)) / jnp.sqrt(jnp.maximum(s, max(w, 1.0))),
        "decay_every": lambda s: decay_factor ** jnp.floor(s / steps_per_decay),
        "cosine_decay": lambda s: 0.5 * (1.0 + jnp.cos(
            jnp.pi * ((jnp.maximum(0.0, s - w) / steps_per_cycle) % 1.0))),
        "linear_decay":
            lambda s: jnp.clip((total_steps - jnp.maximum(s, w)) / decay_span, 0.0, 1.0),
    }


FACTORS = tuple(_factor_functions(1.0, 1, 2, 0.5, 1, 1))


def create_learning_rate_schedule(factors, *, base_learning_rate, warmup_steps, total_steps,
                                  decay_factor=0.5, steps_per_decay=20_000,
                                  steps_per_cycle=None):
    """An optax schedule (step -> float32 learning rate) from a factor string.

    steps_per_cycle (cosine_decay) defaults to total_steps - warmup_steps, so the
    cosine reaches zero at the last step. Raises UserError naming an unknown factor.
    """
    names = [name.strip() for name in factors.split("*")]
    if steps_per_cycle is None:
        steps_per_cycle = max(total_steps - warmup_steps, 1)
    table = _factor_functions(base_learning_rate, warmup_steps, total_steps, decay_factor,
                              steps_per_decay, steps_per_cycle)
    unknown = [name for name in names if name not in table]
    if unknown:
        raise UserError(f"lr_schedule {factors!r}: unknown factor(s) {', '.join(unknown)}; "
                        f"known: {', '.join(FACTORS)}")
    chosen = [table[name] for name in names]

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        rate = jnp.float32(1.0)
        for factor in chosen:
            rate = rate * factor(s)
        return jnp.asarray(rate, jnp.float32)

    return schedule


def schedule_from_args(training_args, total_steps):
    """The schedule the command line asks for, over total_steps optimizer steps."""
    return create_learning_rate_schedule(
        training_args.lr_schedule,
        base_learning_rate=training_args.learning_rate,
        warmup_steps=training_args.warmup_steps,
        total_steps=total_steps,
        decay_factor=training_args.lr_decay_factor,
        steps_per_decay=training_args.lr_steps_per_decay,
    )
