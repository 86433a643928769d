"""Optimizers: the weight-decay mask for any naming, decay only where masked, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import model
from trainer.args import parse_args
from trainer.optimizers import create_optimizer, weight_decay_mask


def training_args(*flags):
    return parse_args(["--output_dir", "unused", *flags])[2]


def constant_rate(count):
    return jnp.float32(0.1)


@pytest.fixture(scope="module")
def bert_params():
    config = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=16)
    return model.from_config(config)[1]


def flat_mask(params):
    paths = jax.tree_util.tree_flatten_with_path(weight_decay_mask(params))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): decayed
            for path, decayed in paths}


def test_mask_on_bert_decays_matrices_and_embeddings_only(bert_params):
    mask = flat_mask(bert_params)
    decayed = {name for name, value in mask.items() if value}
    assert "bert/embeddings/word_embeddings/embedding" in decayed
    assert "bert/encoder/layer/0/attention/self/query/kernel" in decayed
    assert all(name.endswith(("kernel", "embedding")) for name in decayed)
    assert not any(mask[name] for name in mask if name.endswith(("bias", "scale")))


def test_mask_for_other_namings_and_stacked_layers():
    params = {
        "blocks": {  # layers stacked for a scan: biases and norm scales are 2-D here
            "ln_1": {"weight": jnp.ones((4, 8))},
            "attn": {"c_attn": {"w": jnp.ones((4, 8, 8)), "b_bias": jnp.ones((4, 8))}},
            "RMSNorm_0": {"scale": jnp.ones((4, 8))},
        },
        "wte": jnp.ones((10, 8)),
        "final_layer_norm": {"gamma": jnp.ones(8)},
        "head": [jnp.ones((8, 10)), jnp.ones(10)],
    }
    assert flat_mask(params) == {
        "blocks/ln_1/weight": False, "blocks/attn/c_attn/w": True,
        "blocks/attn/c_attn/b_bias": False, "blocks/RMSNorm_0/scale": False,
        "wte": True, "final_layer_norm/gamma": False, "head/0": True, "head/1": False,
    }


def zero_grad_update(args, params):
    """One update with zero gradients: what remains is the weight decay."""
    tx = create_optimizer(args, constant_rate)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


@pytest.mark.parametrize("optimizer", ["adamw", "lamb", "adafactor"])
def test_weight_decay_only_where_masked(optimizer, bert_params):
    args = training_args("--optimizer", optimizer, "--weight_decay", "0.01")
    updates = zero_grad_update(args, bert_params)
    mask = weight_decay_mask(bert_params)
    for update, param, decayed in zip(jax.tree.leaves(updates), jax.tree.leaves(bert_params),
                                      jax.tree.leaves(mask)):
        if not decayed:
            np.testing.assert_array_equal(update, 0.0)
        elif optimizer == "lamb":  # the trust ratio rescales the decay to the rate
            assert float(jnp.vdot(update, param)) < 0
        else:  # lr * weight_decay * param, also for adafactor
            np.testing.assert_allclose(update, -0.1 * 0.01 * param, rtol=1e-5, atol=1e-12)


def test_adafactor_flag_selects_adafactor():
    assert training_args("--adafactor").optimizer == "adafactor"
    state = create_optimizer(training_args("--adafactor"), constant_rate).init(
        {"w": jnp.ones((200, 300))})
    names = {type(s).__name__ for s in jax.tree.leaves(
        state, is_leaf=lambda x: hasattr(x, "_fields"))}
    assert "FactoredState" in names


@pytest.mark.parametrize("max_norm, expected_norm", [("1.0", 1.0), ("0", 100.0)])
def test_clipping_by_global_norm(max_norm, expected_norm):
    args = training_args("--max_grad_norm", max_norm)
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    grads = {"a": jnp.full((2, 3), 40.0), "b": jnp.full(3, 40.0)}  # global norm 40 * 3 = 120
    grads = jax.tree.map(lambda g: g * 100.0 / 120.0, grads)  # global norm 100
    tx = create_optimizer(args, constant_rate)
    _, state = tx.update(grads, tx.init(params), params)
    (adam,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
               if hasattr(s, "mu")]
    # Adam's first moment after one step is (1 - beta1) * the (clipped) gradient.
    assert float(jnp.sqrt(sum(jnp.sum(m ** 2) for m in jax.tree.leaves(adam.mu)))) == \
        pytest.approx(0.1 * expected_norm, rel=1e-5)
