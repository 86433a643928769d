"""The Flax MLM modules: shapes, the masked-position head, dtypes, gradients and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import bert, configuration

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def tiny(model_type="bert", **extra):
    return {"model_type": model_type, **TINY, **extra}


def batch(pad_token_id=0, seed=0):
    """Two sequences of length 12; the second has 4 padding tokens at the end."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = pad_token_id, 0
    types = rng.integers(0, 2, ids.shape).astype(np.int32)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


def perturbed(params, seed=1, scale=0.1):
    """Params with every leaf moved off its init (zero biases, unit scales hide bugs)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny_model(request):
    module, params = model.from_config(tiny(request.param), seed=0)
    return module, perturbed(params)


def test_logits_shapes_and_dtype(tiny_model):
    module, params = tiny_model
    ids, mask, types = batch(module.config.pad_token_id)
    logits = module.apply({"params": params}, ids, mask, types)
    assert logits.shape == (2, 12, 99) and logits.dtype == jnp.float32
    positions = jnp.array([[0, 5, 11], [1, 2, 7]], jnp.int32)
    gathered = module.apply({"params": params}, ids, mask, types, masked_positions=positions)
    assert gathered.shape == (2, 3, 99) and gathered.dtype == jnp.float32
    expected = jnp.take_along_axis(logits, positions[..., None], axis=1)
    np.testing.assert_allclose(gathered, expected, atol=1e-5)


def test_padding_does_not_change_real_tokens(tiny_model):
    """Right padding must be invisible to real tokens (mask and RoBERTa position ids)."""
    module, params = tiny_model
    ids, mask, types = batch(module.config.pad_token_id)
    full = module.apply({"params": params}, ids, mask, types)
    alone = module.apply({"params": params}, ids[1:, :8], mask[1:, :8], types[1:, :8])
    np.testing.assert_allclose(full[1, :8], alone[0], atol=1e-5)


def test_initialisation_follows_bert():
    config = tiny(initializer_range=0.05, intermediate_size=256)
    _, params = model.from_config(config, seed=3)
    flat = {"/".join(k.key for k in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    for name, x in flat.items():
        assert x.dtype == jnp.float32, name
        if name.endswith("bias"):
            assert not np.any(x), name
        elif name.endswith("scale"):
            assert np.all(x == 1), name
    kernel = flat["bert/encoder/layer/0/intermediate/dense/kernel"]
    assert abs(float(jnp.std(kernel)) - 0.05) < 0.005
    _, other = model.from_config(config, seed=4)
    assert not np.array_equal(other["bert"]["embeddings"]["word_embeddings"]["embedding"],
                              params["bert"]["embeddings"]["word_embeddings"]["embedding"])


def test_untied_decoder_has_its_own_weight():
    module, params = model.from_config(tiny(tie_word_embeddings=False))
    assert "decoder" in params["cls"]["predictions"]
    ids, mask, _ = batch()
    assert module.apply({"params": params}, ids, mask).shape == (2, 12, 99)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.bfloat16, 0.05), (jnp.float16, 0.01)])
def test_half_precision_close_to_float32(tiny_model, dtype, tolerance):
    """Measured max |diff|: 0.024 (bf16) and 0.003 (fp16) on logits of std 0.6, max 2.1."""
    module, params = tiny_model
    ids, mask, types = batch(module.config.pad_token_id)
    ref = module.apply({"params": params}, ids, mask, types)
    low = bert.ForMaskedLM(module.config, dtype=dtype).apply({"params": params}, ids, mask, types)
    assert low.dtype == jnp.float32
    assert np.all(np.isfinite(low))
    assert float(jnp.max(jnp.abs(low - ref))) < tolerance


def test_gradients_reach_every_parameter(tiny_model):
    module, params = tiny_model
    ids, mask, types = batch(module.config.pad_token_id)
    positions = jnp.array([[1, 4, 9], [0, 3, 6]], jnp.int32)
    targets = jnp.array([[5, 6, 7], [8, 9, 10]], jnp.int32)

    def loss(p):
        logits = module.apply({"params": p}, ids, mask, types, masked_positions=positions,
                              deterministic=False, rngs={"dropout": jax.random.key(0)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_dropout_only_when_asked(tiny_model):
    module, params = tiny_model
    ids, mask, types = batch(module.config.pad_token_id)
    apply = lambda **kw: module.apply({"params": params}, ids, mask, types, **kw)
    base = apply()
    np.testing.assert_array_equal(base, apply(rngs={"dropout": jax.random.key(0)}))
    one = apply(deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(one, apply(deterministic=False,
                                             rngs={"dropout": jax.random.key(0)}))
    two = apply(deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.max(jnp.abs(one - base))) > 1e-3
    assert float(jnp.max(jnp.abs(one - two))) > 1e-3


def test_attention_paths_agree_without_dropout():
    """The dropout path (flax) and the fused path (jax.nn) compute the same attention."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 6, 4, 8))
    mask = jnp.arange(6)[None, None, None, :] < jnp.array([6, 3])[:, None, None, None]
    fused = bert.attention(q, k, v, mask)
    np.testing.assert_allclose(fused, bert.nn.dot_product_attention(q, k, v, mask=mask),
                               atol=1e-6)
    same = jnp.broadcast_to(q[:1], q.shape)  # identical examples
    dropped = bert.attention(same, same, same, mask[:1], dropout_rate=0.5,
                             dropout_rng=jax.random.key(0))
    assert not np.allclose(dropped[0], dropped[1])  # a dropout mask per example, as BERT


def test_unknown_activation_is_named():
    module, _ = model.from_config(tiny(), seed=0)
    module.config.hidden_act = "gelu_42"
    ids, mask, _ = batch()
    with pytest.raises(ValueError, match="hidden_act.*gelu_42.*supported"):
        module.init(jax.random.key(0), ids, mask)


def test_module_is_a_valid_static_argument():
    module, params = model.from_config(tiny())
    same = bert.ForMaskedLM(configuration.load_config(tiny()))
    assert hash(module) == hash(same) and module == same
    other = bert.ForMaskedLM(configuration.load_config(tiny(hidden_act="relu")))
    assert hash(module) != hash(other) and module != other
    ids, mask, _ = batch()
    apply = jax.jit(lambda m, p: m.apply({"params": p}, ids, mask), static_argnums=0)
    np.testing.assert_array_equal(apply(module, params), apply(same, params))
