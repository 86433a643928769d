"""Config loading and checkpoint import/export without PyTorch (safetensors files we write)."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

import model
from model import configuration
from test_model import batch, perturbed, tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A perturbed tiny BERT saved with save_pretrained: (directory, module, params)."""
    module, params = model.from_config(tiny(), seed=0)
    params = perturbed(params)
    directory = tmp_path_factory.mktemp("exported")
    model.save_pretrained(directory, module, params)
    return directory, module, params


def rewrite(source, target, edit):
    """Copy a checkpoint directory, passing its tensors through `edit`."""
    target.mkdir()
    (target / "config.json").write_text((source / "config.json").read_text())
    save_file(edit(load_file(source / "model.safetensors")), target / "model.safetensors",
              metadata={"format": "pt"})
    return target


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_config_sources_agree(tmp_path):
    values = tiny("roberta")
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = transformers.RobertaConfig(**{k: v for k, v in values.items() if k != "model_type"})
    sources = [values, tmp_path, tmp_path / "config.json", str(tmp_path), config]
    loaded = [configuration.load_config(s) for s in sources]
    assert all(c.to_dict() == loaded[0].to_dict() for c in loaded[1:])
    module, params = model.from_config(tmp_path)
    assert module.config.model_type == "roberta" and module.config.hidden_size == 32
    assert params["roberta"]["embeddings"]["word_embeddings"]["embedding"].shape == (99, 32)


@pytest.mark.parametrize("values, message", [
    (tiny("gpt2"), r"'gpt2'.*supported: bert, roberta, xlm-roberta"),
    ({"hidden_size": 8}, r"model_type.*missing"),
])
def test_bad_config_is_named(tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        model.from_config(values)
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=str(tmp_path / "config.json")):
        model.from_config(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*config.json"):
        model.from_config(tmp_path)


def test_shapes_only_reads_and_initialises_nothing(exported, tmp_path):
    """What a resumed run builds: the model's shapes, even where the weights could not load."""
    directory, module, params = exported
    want = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    _, shapes = model.from_config(module.config, shapes_only=True)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == want
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "config.json").write_text((directory / "config.json").read_text())
    (unreadable / "model.safetensors").write_bytes(b"not safetensors")
    _, shapes = model.from_pretrained(unreadable, shapes_only=True)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == want


def test_export_writes_config_and_import_is_bitwise(exported):
    directory, module, params = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    assert module.config.architectures is None  # the caller's config is not modified
    tensors = load_file(directory / "model.safetensors")
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["bert.encoder.layer.0.intermediate.dense.weight"].shape == (37, 32)
    loaded_module, loaded = model.from_pretrained(directory)
    assert_trees_equal(params, loaded)
    ids, mask, types = batch()
    np.testing.assert_array_equal(module.apply({"params": params}, ids, mask, types),
                                  loaded_module.apply({"params": loaded}, ids, mask, types))


def test_compute_dtype_keeps_float32_params(exported):
    directory, _, _ = exported
    module, params = model.from_pretrained(directory, dtype=jnp.bfloat16)
    assert module.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_config_overrides(exported):
    directory, _, params = exported
    module, loaded = model.from_pretrained(
        directory, config_overrides="hidden_dropout_prob=0,layer_norm_eps=1e-6,hidden_act=relu")
    assert module.config.hidden_dropout_prob == 0.0
    assert isinstance(module.config.hidden_dropout_prob, float)
    assert module.config.layer_norm_eps == 1e-6 and module.config.hidden_act == "relu"
    assert_trees_equal(params, loaded)
    with pytest.raises(ValueError, match="unknown config key 'hiden_size'"):
        model.from_pretrained(directory, config_overrides="hiden_size=64")
    with pytest.raises(ValueError, match="'num_hidden_layers' is not of the form key=value"):
        model.from_pretrained(directory, config_overrides="num_hidden_layers")


def test_shape_mismatch_names_tensor_and_shapes(exported):
    directory, _, _ = exported
    with pytest.raises(ValueError, match=r"bert\.embeddings\.word_embeddings\.weight has "
                                         r"shape \(99, 32\), the model expects \(100, 32\)"):
        model.from_pretrained(directory, config_overrides="vocab_size=100")


def test_legacy_names_and_tied_aliases(exported, tmp_path):
    """TF-era names: LayerNorm gamma/beta, position_ids buffer, explicit tied decoder."""
    directory, _, params = exported

    def legacy(tensors):
        out = {}
        for name, value in tensors.items():
            if "LayerNorm" in name:
                name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
            out[name] = value
        out["bert.embeddings.position_ids"] = np.arange(64)[None]
        out["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
        del out["cls.predictions.bias"]
        return out

    _, loaded = model.from_pretrained(rewrite(directory, tmp_path / "legacy", legacy))
    assert_trees_equal(params, loaded)


def test_bare_encoder_initialises_head(exported, tmp_path, caplog):
    directory, _, params = exported

    def bare(tensors):
        out = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
        out["pooler.dense.weight"] = np.zeros((32, 32), np.float32)
        return out

    with caplog.at_level(logging.WARNING):
        _, loaded = model.from_pretrained(rewrite(directory, tmp_path / "bare", bare))
    assert "unused weights in the checkpoint: bert.pooler.dense.weight" in caplog.text
    assert ("newly initialised: cls.predictions.bias, cls.predictions.transform.LayerNorm.bias"
            in caplog.text)
    assert_trees_equal(params["bert"], loaded["bert"])
    head = loaded["cls"]["predictions"]
    assert np.all(head["transform"]["LayerNorm"]["scale"] == 1) and not np.any(head["bias"])


def test_sharded_index(exported, tmp_path):
    directory, _, params = exported
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    target = tmp_path / "sharded"
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, target / shard, metadata={"format": "pt"})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    _, loaded = model.from_pretrained(target)
    assert_trees_equal(params, loaded)


def test_missing_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny()))
    with pytest.raises(ValueError, match=f"{tmp_path}: no weights found.*model.safetensors"):
        model.from_pretrained(tmp_path)


def test_bfloat16_checkpoint_is_read_as_float32(exported, tmp_path):
    directory, _, params = exported
    import ml_dtypes

    target = rewrite(directory, tmp_path / "bf16",
                     lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
    _, loaded = model.from_pretrained(target)
    expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    assert_trees_equal(expected, loaded)
