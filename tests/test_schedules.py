"""Learning-rate schedules against their formulas (and optax's own for the default)."""

import math

import jax
import numpy as np
import optax
import pytest

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
