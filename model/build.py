"""Building a model: the Flax module of a config, and its parameters (fresh, or shapes only).

A resumed run asks for shapes only: its values come from the checkpoint, so
nothing is initialised and nothing is compiled for it.
"""

import functools

import jax
import jax.numpy as jnp

from model import bert, configuration


def build(config, dtype=jnp.float32):
    return bert.ForMaskedLM(config, dtype=dtype)


@functools.partial(jax.jit, static_argnums=0)
def _init(module, rng):
    # lazy_init skips the forward pass that init would run on a dummy batch;
    # jit with the (hashable) module static reuses the compilation for equal models.
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    return module.lazy_init(rng, ids, ids)["params"]


def init_params(module, seed=0):
    """Fresh BERT-initialised float32 parameters."""
    return _init(module, jax.random.key(seed))


def param_shapes(module):
    """The parameters' shapes and dtypes (jax.ShapeDtypeStructs), computing nothing."""
    return jax.eval_shape(_init, module, jax.random.key(0))


def from_config(config_or_path, seed=0, dtype=jnp.float32, shapes_only=False):
    """A randomly initialised model for training from scratch: (module, params).

    With shapes_only, params are param_shapes(module).
    """
    module = build(configuration.load_config(config_or_path), dtype)
    return module, param_shapes(module) if shapes_only else init_params(module, seed)
