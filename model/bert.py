"""Flax (linen) BERT and RoBERTa for masked language modelling.

Submodule and parameter names mirror the PyTorch names of `transformers`
(`bert.encoder.layer.0.attention.self.query`, `cls.predictions.bias`, ...)
so checkpoint conversion is a mechanical rename plus kernel transposes.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.random import threefry2x32_p

from pipeline.errors import UserError

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name):
    if name not in ACTIVATIONS:
        raise UserError(f"config field hidden_act: unsupported activation {name!r}; "
                        f"supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def is_roberta(config):
    return config.model_type in ("roberta", "xlm-roberta")


def keep_mask(rng, shape, rate, example_ids=None):
    """Which elements of an activation [batch, ...] dropout keeps (each with probability 1 - rate).

    An element's draw is Threefry's hash of (its example's index in the global
    batch, its position within the example) under a key from `rng`: an
    example's mask does not depend on which device holds it, how the batch is
    split into micro-batches, or what else is in its batch, so the pmap and
    the mesh steps, on any number of devices, drop the same units. It costs
    what `jax.random.bernoulli` costs. example_ids (int [batch]) defaults to
    0, 1, ..., batch - 1.
    """
    if example_ids is None:
        example_ids = jnp.arange(shape[0])
    key = jax.random.bits(rng, (2,), jnp.uint32)  # a Threefry key from any kind of key
    examples = lax.broadcast_in_dim(example_ids.astype(jnp.uint32), shape, (0,))
    # "+ examples * 0" (folded away by XLA) types both counter words alike: under shard_map
    # the ids vary by device, and Threefry's loop needs its two words to agree.
    positions = examples * 0 + sum(
        lax.broadcasted_iota(jnp.uint32, shape, d) * math.prod(shape[d + 1:])
        for d in range(1, len(shape)))
    bits = jnp.bitwise_xor(*threefry2x32_p.bind(key[0], key[1], examples, positions))
    return bits >= jnp.uint32(min(round(rate * 2 ** 32), 2 ** 32 - 1))


def dropout(x, rate, rng, example_ids=None):
    """Inverted dropout of x [batch, ...] with keep_mask's per-example masks."""
    keep = keep_mask(rng, x.shape, rate, example_ids)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def attention(query, key, value, mask, dropout_rate=0.0, dropout_rng=None, example_ids=None):
    """Multi-head attention on [batch, length, heads, head_dim] arrays.

    Without dropout this is `jax.nn.dot_product_attention` (which can use
    fused kernels); it has no attention-probability dropout, so training
    with dropout computes the probabilities with flax and drops them with
    an independent mask per example and head, as BERT does.
    """
    if dropout_rng is None or dropout_rate == 0.0:
        return jax.nn.dot_product_attention(query, key, value, mask=mask)
    weights = nn.dot_product_attention_weights(query, key, mask=mask)
    weights = dropout(weights, dropout_rate, dropout_rng, example_ids)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class _Base(nn.Module):
    """Shared fields and layer constructors (BERT initialisation, float32 params)."""
    config: Any
    dtype: Any = jnp.float32

    def dense(self, features, name):
        init = nn.initializers.normal(self.config.initializer_range)
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=init, name=name)

    def layer_norm(self, name):
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype,
                            param_dtype=jnp.float32, use_fast_variance=False, name=name)

    def dropout(self, x, rate, deterministic, example_ids):
        if deterministic or rate == 0.0:
            return x
        return dropout(x, rate, self.make_rng("dropout"), example_ids)


class Embeddings(_Base):

    def embed(self, num, name):
        init = nn.initializers.normal(self.config.initializer_range)
        return nn.Embed(num, self.config.hidden_size, embedding_init=init, dtype=self.dtype,
                        param_dtype=jnp.float32, name=name)

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic, example_ids):
        cfg = self.config
        word = self.embed(cfg.vocab_size, "word_embeddings")
        if is_roberta(cfg):
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            position_ids = jnp.arange(input_ids.shape[-1])[None, :]
        x = (word(input_ids)
             + self.embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
             + self.embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = self.layer_norm("LayerNorm")(x)
        return self.dropout(x, cfg.hidden_dropout_prob, deterministic, example_ids), word.embedding


class SelfAttention(_Base):

    @nn.compact
    def __call__(self, x, mask, deterministic, example_ids):
        cfg = self.config
        heads = cfg.num_attention_heads
        split = lambda t: t.reshape(t.shape[:-1] + (heads, t.shape[-1] // heads))
        q, k, v = (split(self.dense(cfg.hidden_size, n)(x)) for n in ("query", "key", "value"))
        rate = cfg.attention_probs_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out = attention(q, k, v, mask, rate, rng, example_ids)
        return out.reshape(out.shape[:-2] + (-1,))


class AddNorm(_Base):
    """Dense projection, dropout, residual add and post-LayerNorm."""
    features: int = 0

    @nn.compact
    def __call__(self, x, residual, deterministic, example_ids):
        x = self.dense(self.features, "dense")(x)
        x = self.dropout(x, self.config.hidden_dropout_prob, deterministic, example_ids)
        return self.layer_norm("LayerNorm")(x + residual)


class Attention(_Base):

    @nn.compact
    def __call__(self, x, mask, deterministic, example_ids):
        h = SelfAttention(self.config, self.dtype, name="self")(x, mask, deterministic,
                                                                example_ids)
        return AddNorm(self.config, self.dtype, self.config.hidden_size, name="output")(
            h, x, deterministic, example_ids)


class Intermediate(_Base):

    @nn.compact
    def __call__(self, x):
        x = self.dense(self.config.intermediate_size, "dense")(x)
        return activation(self.config.hidden_act)(x)


class Layer(_Base):

    @nn.compact
    def __call__(self, x, mask, deterministic, example_ids):
        cfg = self.config
        x = Attention(cfg, self.dtype, name="attention")(x, mask, deterministic, example_ids)
        h = Intermediate(cfg, self.dtype, name="intermediate")(x)
        return AddNorm(cfg, self.dtype, cfg.hidden_size, name="output")(
            h, x, deterministic, example_ids)


class LayerStack(_Base):
    """The encoder layers, named "0", "1", ... as in PyTorch's ModuleList."""

    @nn.compact
    def __call__(self, x, mask, deterministic, example_ids):
        for i in range(self.config.num_hidden_layers):
            x = Layer(self.config, self.dtype, name=str(i))(x, mask, deterministic, example_ids)
        return x


class Encoder(_Base):

    @nn.compact
    def __call__(self, x, mask, deterministic, example_ids):
        return LayerStack(self.config, self.dtype, name="layer")(x, mask, deterministic,
                                                                 example_ids)


class Backbone(_Base):
    """BertModel / RobertaModel without the pooler (MLM does not use it)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic, example_ids):
        x, word = Embeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic, example_ids)
        mask = attention_mask.astype(bool)[:, None, None, :]
        x = Encoder(self.config, self.dtype, name="encoder")(x, mask, deterministic, example_ids)
        return x, word


class LMHead(_Base):
    """Dense, activation, LayerNorm, tied (or separate) decoder and output bias.

    BERT's head uses `hidden_act` and names its parts `transform.dense` and
    `transform.LayerNorm`; RoBERTa's always uses exact GELU and names them
    `dense` and `layer_norm`.
    """

    @nn.compact
    def __call__(self, x, word_embeddings):
        cfg = self.config
        if is_roberta(cfg):
            x = self.dense(cfg.hidden_size, "dense")(x)
            x = self.layer_norm("layer_norm")(ACTIVATIONS["gelu"](x))
        else:
            x = Transform(cfg, self.dtype, name="transform")(x)
        if cfg.tie_word_embeddings:
            logits = jnp.dot(x, word_embeddings.astype(self.dtype).T)
        else:
            logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=jnp.float32, name="decoder",
                              kernel_init=nn.initializers.normal(cfg.initializer_range))(x)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32)
        return logits.astype(jnp.float32) + bias


class Transform(_Base):

    @nn.compact
    def __call__(self, x):
        x = self.dense(self.config.hidden_size, "dense")(x)
        x = activation(self.config.hidden_act)(x)
        return self.layer_norm("LayerNorm")(x)


class Predictions(_Base):
    """BERT's `cls` wrapper, so parameters land under `cls.predictions`."""

    @nn.compact
    def __call__(self, x, word_embeddings):
        return LMHead(self.config, self.dtype, name="predictions")(x, word_embeddings)


class ForMaskedLM(_Base):
    """BertForMaskedLM / RobertaForMaskedLM.

    With `masked_positions` ([batch, P] int) only those hidden states go
    through the head, as original BERT does: the vocabulary projection is
    most of the head's cost and only masked tokens carry loss. With dropout,
    `example_ids` ([batch] int, default 0..batch-1) are the examples' indices
    in the global batch, which choose their dropout masks (see keep_mask).
    """

    def __hash__(self):
        # Configs are mutable, hence unhashable; hashing their JSON lets callers
        # pass the module as a static argument to jax.jit.
        return hash((type(self), jnp.dtype(self.dtype).name, self.config.to_json_string()))

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, masked_positions=None,
                 deterministic=True, example_ids=None):
        cfg = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        base = "roberta" if is_roberta(cfg) else "bert"
        x, word = Backbone(cfg, self.dtype, name=base)(
            input_ids, attention_mask, token_type_ids, deterministic, example_ids)
        if masked_positions is not None:
            x = jnp.take_along_axis(x, masked_positions[..., None].astype(jnp.int32), axis=1)
        if is_roberta(cfg):
            return LMHead(cfg, self.dtype, name="lm_head")(x, word)
        return Predictions(cfg, self.dtype, name="cls")(x, word)
