"""Learning-rate schedules written as products of named factors.

The factor strings are those of flax's lm1b/wmt examples, e.g.
"constant * linear_warmup * rsqrt_decay", plus linear_decay, so that
run_mlm_flax.py's schedule (linear warmup, then linear decay to zero at the
last step) is "constant * linear_warmup * linear_decay", our default.

Factors at optimizer step s (the first update is s = 0, the last s = T - 1),
with w = warmup_steps and T = total_steps:
  constant                base_learning_rate
  linear_warmup           min(1, s / w)                       (1 when w = 0)
  rsqrt_decay             1 / sqrt(max(s, w, 1))
  rsqrt_normalized_decay  sqrt(max(w, 1)) / sqrt(max(s, w, 1)) (1 until the end of warmup)
  decay_every             decay_factor ** (s // steps_per_decay)
  cosine_decay            0.5 * (1 + cos(pi * (p % 1))), p = max(0, s - w) / steps_per_cycle
  linear_decay            max(0, (T - max(s, w)) / (T - w))   (1 until the end of warmup;
                                                               1 throughout when T <= w)
"rsqrt_decay" keeps flax's convention (the peak is base / sqrt(w)); use
"rsqrt_normalized_decay" for a peak of base_learning_rate. The max(., 1)
guards only matter when warmup_steps is 0, where the flax formulas divide by zero.

At the edges:
  w = 0       no warm-up: the default starts at the base rate and decays linearly to 0 at T.
  w >= T      the warm-up lasts the whole run, as in run_mlm_flax.py (whose decay is then
              empty): the rate climbs to base x (T - 1) / w at the last step and never
              decays. train.py says so in one line (`warmup_note`).
  T = 1       one update, at s = 0: with w > 0, linear_warmup makes it 0.
  decay_every the first decay is at s = steps_per_decay; none in a shorter run.
  cosine_decay steps_per_cycle defaults to max(T - w, 1): one half cosine from the end of
              warm-up to near 0 at the last step; a shorter cycle restarts at the base rate.
A schedule that is 0 at every step of its run (linear_warmup with T = 1 and w > 0, or a
learning_rate below float32's range) would train nothing, and one that is not finite at
some step (a learning_rate beyond float32's range) would make the parameters NaN:
`schedule_from_args` refuses both, naming the factors, the rate, w and T.
"""

import jax.numpy as jnp
import numpy as np

from pipeline.errors import UserError

# Steps at which a schedule is checked: every step of a run up to this many, else this many
# evenly spaced ones (the first and the last among them).
CHECKED_STEPS = 1 << 20


def _factor_functions(base_learning_rate, warmup_steps, total_steps, decay_factor,
                      steps_per_decay, steps_per_cycle, xp=jnp):
    """Each factor as a function of the (float) step, in jax.numpy (xp=np: NumPy's)."""
    w = float(warmup_steps)
    decay_span = float(max(total_steps - warmup_steps, 1))
    return {
        "constant": lambda s: xp.float32(base_learning_rate),
        "linear_warmup": (lambda s: xp.minimum(1.0, s / w)) if w > 0 else (lambda s: 1.0),
        "rsqrt_decay": lambda s: xp.reciprocal(xp.sqrt(xp.maximum(s, max(w, 1.0)))),
        "rsqrt_normalized_decay":
            lambda s: xp.sqrt(max(w, 1.0)) / xp.sqrt(xp.maximum(s, max(w, 1.0))),
        "decay_every": lambda s: decay_factor ** xp.floor(s / steps_per_decay),
        "cosine_decay": lambda s: 0.5 * (1.0 + xp.cos(
            xp.pi * ((xp.maximum(0.0, s - w) / steps_per_cycle) % 1.0))),
        "linear_decay":
            (lambda s: xp.clip((total_steps - xp.maximum(s, w)) / decay_span, 0.0, 1.0))
            if total_steps > warmup_steps else (lambda s: 1.0),
    }


FACTORS = tuple(_factor_functions(1.0, 1, 2, 0.5, 1, 1))


def factor_names(factors):
    """The factor string's names; raises UserError naming an unknown one."""
    names = [name.strip() for name in factors.split("*")]
    unknown = [name for name in names if name not in FACTORS]
    if unknown:
        raise UserError(f"lr_schedule {factors!r}: unknown factor(s) {', '.join(unknown)}; "
                        f"known: {', '.join(FACTORS)}")
    return names


def create_learning_rate_schedule(factors, *, base_learning_rate, warmup_steps, total_steps,
                                  decay_factor=0.5, steps_per_decay=20_000,
                                  steps_per_cycle=None, xp=jnp):
    """An optax schedule (step -> float32 learning rate) from a factor string.

    steps_per_cycle (cosine_decay) defaults to total_steps - warmup_steps, so the
    cosine reaches zero at the last step. Raises UserError naming an unknown factor.
    With xp=np it computes in NumPy, compiling nothing (the checks below).
    """
    names = factor_names(factors)
    if steps_per_cycle is None:
        steps_per_cycle = max(total_steps - warmup_steps, 1)
    table = _factor_functions(base_learning_rate, warmup_steps, total_steps, decay_factor,
                              steps_per_decay, steps_per_cycle, xp)
    chosen = [table[name] for name in names]

    def schedule(step):
        s = xp.asarray(step, xp.float32)
        rate = xp.float32(1.0)
        for factor in chosen:
            rate = rate * factor(s)
        return xp.asarray(rate, xp.float32)

    return schedule


def build_schedule(training_args, total_steps, xp=jnp):
    """The schedule the command line asks for, over total_steps optimizer steps, unchecked
    (xp=np: its NumPy twin, which compiles nothing)."""
    return create_learning_rate_schedule(
        training_args.lr_schedule,
        base_learning_rate=training_args.learning_rate,
        warmup_steps=training_args.warmup_steps,
        total_steps=max(total_steps, 1),
        decay_factor=training_args.lr_decay_factor,
        steps_per_decay=training_args.lr_steps_per_decay,
        xp=xp,
    )


def schedule_from_args(training_args, total_steps):
    """The schedule a run trains with, over total_steps optimizer steps (0: none).

    Raises UserError when it would train nothing or make the parameters NaN.
    """
    if total_steps > 0:
        _check_trains(training_args, total_steps)
    return build_schedule(training_args, total_steps)


def _check_trains(training_args, total_steps):
    """Raises UserError if the schedule is 0 at every step of the run, or ever not finite."""
    steps = np.unique(np.linspace(0, total_steps - 1, min(total_steps, CHECKED_STEPS),
                                  dtype=np.int64))
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, in one line
        rates = build_schedule(training_args, total_steps, xp=np)(steps)
    what = (f"lr_schedule {training_args.lr_schedule!r} (learning_rate "
            f"{training_args.learning_rate:g}, warmup_steps {training_args.warmup_steps}) over "
            f"{total_steps} step(s)")
    if not np.isfinite(rates).all():
        raise UserError(f"{what} is not finite at step {steps[~np.isfinite(rates)][0]}")
    if not (rates > 0).any():
        raise UserError(f"{what} is 0 at every step: the run would train nothing")


def warmup_note(training_args, total_steps):
    """One line when the warm-up lasts the whole run (warmup_steps >= its steps), else None."""
    if "linear_warmup" not in factor_names(training_args.lr_schedule) or not (
            0 < total_steps <= training_args.warmup_steps):
        return None
    last = build_schedule(training_args, total_steps, xp=np)(total_steps - 1)
    return (f"warmup_steps {training_args.warmup_steps} >= the run's {total_steps} steps: the "
            f"learning rate warms up through the whole run, as run_mlm_flax.py's does, to "
            f"{float(last):.3g} at the last step, and does not decay")
