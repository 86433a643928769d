"""Learning-rate schedules against their formulas (and optax's own for the default)."""

import math
import re
import types

import jax
import numpy as np
import optax
import pytest

from pipeline.errors import UserError
from trainer import schedules
from trainer.schedules import create_learning_rate_schedule

STEPS = [0, 1, 50, 99, 100, 101, 250, 999, 1000, 1500]


def schedule(factors, **kwargs):
    settings = dict(base_learning_rate=0.5, warmup_steps=100, total_steps=1000)
    settings.update(kwargs)
    return create_learning_rate_schedule(factors, **settings)


def check(factors, formula, atol=1e-9, **kwargs):
    fn = schedule(factors, **kwargs)
    for s in STEPS:
        assert float(fn(s)) == pytest.approx(formula(s), rel=1e-5, abs=atol), (factors, s)


def test_default_is_run_mlm_flax_linear_warmup_then_linear_decay_to_zero():
    reference = optax.join_schedules(
        [optax.linear_schedule(0.0, 0.5, 100), optax.linear_schedule(0.5, 0.0, 900)], [100])
    # optax computes 0.5 - 0.5 * fraction in float32: near zero it is off by ~1e-8.
    check("constant * linear_warmup * linear_decay", lambda s: float(reference(s)), atol=1e-7)
    assert float(schedule("constant * linear_warmup * linear_decay")(1000)) == 0.0


def test_flax_lm1b_default_factors():
    check("constant * linear_warmup * rsqrt_decay",
          lambda s: 0.5 * min(1.0, s / 100) / math.sqrt(max(s, 100)))


def test_rsqrt_normalized_decay_peaks_at_the_base_rate():
    check("constant * linear_warmup * rsqrt_normalized_decay",
          lambda s: 0.5 * min(1.0, s / 100) * math.sqrt(100) / math.sqrt(max(s, 100)))


def test_decay_every():
    check("constant * decay_every", lambda s: 0.5 * 0.1 ** (s // 250),
          decay_factor=0.1, steps_per_decay=250)


def test_cosine_decay_cycle_spans_the_run_after_warmup_by_default():
    # flax's cosine is cyclic: it nears zero at the last step (999) and restarts after.
    check("constant * linear_warmup * cosine_decay",
          lambda s: 0.5 * min(1.0, s / 100) * 0.5 * (
              1 + math.cos(math.pi * ((max(0, s - 100) / 900) % 1.0))), atol=1e-8)
    check("constant * cosine_decay",
          lambda s: 0.5 * 0.5 * (1 + math.cos(math.pi * ((max(0, s - 100) / 300) % 1.0))),
          steps_per_cycle=300, atol=1e-8)


def test_zero_warmup_stays_finite():
    for factors in ("constant * linear_warmup * rsqrt_decay",
                    "constant * linear_warmup * rsqrt_normalized_decay",
                    "constant * linear_warmup * linear_decay"):
        values = np.array([schedule(factors, warmup_steps=0)(s) for s in STEPS])
        assert np.all(np.isfinite(values)) and values[0] == 0.5, factors


def test_unknown_factor_is_named():
    with pytest.raises(ValueError, match="linear_wramup"):
        schedule("constant * linear_wramup")


def test_works_on_arrays_of_steps_under_jit():
    fn = jax.jit(schedule("constant * linear_warmup * linear_decay"))
    np.testing.assert_allclose(fn(np.arange(3)), [0.0, 0.005, 0.01], rtol=1e-6)


def args(**changes):
    """The training flags a schedule is made of: run_mlm_flax.py's defaults, warm-up 100."""
    settings = dict(lr_schedule="constant * linear_warmup * linear_decay", learning_rate=0.5,
                    warmup_steps=100, lr_decay_factor=0.5, lr_steps_per_decay=20_000)
    return types.SimpleNamespace(**{**settings, **changes})


@pytest.mark.parametrize("total_steps", [100, 50])
def test_warmup_as_long_as_the_run_warms_up_through_it_as_run_mlm_flax_does(total_steps):
    """w >= T: optax's decay over T - w <= 0 steps is constant, so run_mlm_flax.py's rate is
    the warm-up's; ours too (it used to be 0 throughout), and a line says so."""
    reference = optax.join_schedules([optax.linear_schedule(0.0, 0.5, 100),
                                      optax.linear_schedule(0.5, 0.0, total_steps - 100)], [100])
    fn = schedules.schedule_from_args(args(), total_steps)
    steps = np.arange(total_steps)
    np.testing.assert_allclose(fn(steps), [reference(s) for s in steps], rtol=1e-6)
    assert (fn(steps[1:]) > 0).all()
    assert schedules.warmup_note(args(), total_steps) == (
        f"warmup_steps 100 >= the run's {total_steps} steps: the learning rate warms up "
        f"through the whole run, as run_mlm_flax.py's does, to "
        f"{0.5 * (total_steps - 1) / 100:.3g} at the last step, and does not decay")
    assert schedules.warmup_note(args(), 101) is None
    assert schedules.warmup_note(args(lr_schedule="constant * linear_decay"), 50) is None


def test_edges_of_each_factor():
    # w = 0: no warm-up, straight to the base rate.
    check("constant * linear_warmup * linear_decay", lambda s: 0.5 * max(0, 1000 - s) / 1000,
          warmup_steps=0, atol=1e-7)
    # T = w + 1: one step after warm-up, at the base rate, then 0.
    fn = schedule("constant * linear_warmup * linear_decay", total_steps=101)
    assert [float(fn(s)) for s in (99, 100, 101)] == pytest.approx([0.495, 0.5, 0.0])
    # T = 1 without warm-up: the one update gets the base rate.
    assert float(schedule("constant * linear_warmup * linear_decay", warmup_steps=0,
                          total_steps=1)(0)) == 0.5
    # decay_every: the first decay at steps_per_decay, none before.
    fn = schedule("constant * decay_every", decay_factor=0.1, steps_per_decay=250)
    assert [float(fn(s)) for s in (249, 250)] == pytest.approx([0.5, 0.05])
    # cosine_decay with w >= T: the cycle has not begun, so the factor stays 1.
    fn = schedule("constant * linear_warmup * cosine_decay", total_steps=80)
    assert float(fn(79)) == pytest.approx(0.5 * 79 / 100)
    # a cycle shorter than the run restarts at the base rate.
    fn = schedule("constant * cosine_decay", steps_per_cycle=300, warmup_steps=0)
    assert [float(fn(s)) for s in (0, 150, 300)] == pytest.approx([0.5, 0.25, 0.5], abs=1e-7)


@pytest.mark.parametrize("changes, total_steps, refusal", [
    (dict(), 1, "over 1 step(s) is 0 at every step: the run would train nothing"),
    (dict(learning_rate=1e-50, warmup_steps=0), 10, "is 0 at every step"),
    (dict(learning_rate=1e39, warmup_steps=0), 10, "is not finite at step 0"),
])
def test_a_schedule_that_trains_nothing_or_diverges_is_refused(changes, total_steps, refusal):
    with pytest.raises(UserError, match="^lr_schedule 'constant \\* linear_warmup \\* "
                                        "linear_decay' .*" + re.escape(refusal)):
        schedules.schedule_from_args(args(**changes), total_steps)
    schedules.schedule_from_args(args(**changes), 0)  # an evaluation-only run: no schedule


@pytest.mark.parametrize("factors", [
    "constant * linear_warmup * linear_decay", "constant * linear_warmup * rsqrt_decay",
    "constant * linear_warmup * rsqrt_normalized_decay", "constant * decay_every",
    "constant * linear_warmup * cosine_decay"])
def test_numpy_twin_that_checks_a_schedule_computes_the_same_rates(factors):
    """The checks run the schedule in NumPy (nothing to compile at start): the same rates."""
    steps = np.array(STEPS)
    np.testing.assert_allclose(schedule(factors, xp=np)(steps), schedule(factors)(steps),
                               rtol=1e-6, atol=1e-9)
