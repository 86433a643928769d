"""ModelConfig against transformers' own config classes: defaults, round trips, overrides."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import transformers

from model import configuration
from model.configuration import SUPPORTED_MODEL_TYPES, ModelConfig
from pipeline.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)

# A hub config.json as older transformers wrote it: keys ModelConfig does not know.
HUB_BERT = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32,
    "num_hidden_layers": 1, "num_attention_heads": 4, "gradient_checkpointing": False,
    "position_embedding_type": "absolute", "torch_dtype": "float16",
    "transformers_version": "4.6.0.dev0", "id2label": {"0": "NEG", "1": "POS"},
    "label2id": {"NEG": 0, "POS": 1},
}


def hf_dict(directory):
    """What transformers loads from a config.json, less where it came from."""
    values = transformers.AutoConfig.from_pretrained(directory).to_dict()
    values.pop("_name_or_path")
    return values


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_defaults_are_transformers_defaults(model_type):
    ours = ModelConfig(model_type).to_dict()
    theirs = transformers.AutoConfig.for_model(model_type)
    assert ours == {key: theirs.to_dict()[key] for key in ours}
    # Every field of the model's config class (what transformers saves) is one of ours.
    assert set(theirs.to_diff_dict()) - set(ours) == {"transformers_version"}


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_transformers_config_round_trips(tmp_path, model_type):
    theirs = transformers.AutoConfig.for_model(
        model_type, **SMALL, hidden_act="relu", id2label={0: "A", 1: "B", 2: "C"},
        dtype="bfloat16")
    theirs.save_pretrained(tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    config = configuration.load_config(tmp_path / "hf")
    assert config.to_dict() == written and config.hidden_size == 32 and config.dtype == "bfloat16"
    config.save_pretrained(tmp_path / "ours")
    assert hf_dict(tmp_path / "ours") == hf_dict(tmp_path / "hf")
    configuration.load_config(tmp_path / "ours").save_pretrained(tmp_path / "again")
    assert ((tmp_path / "again" / "config.json").read_bytes()
            == (tmp_path / "ours" / "config.json").read_bytes())


def test_hub_config_keeps_unknown_keys(tmp_path):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text(json.dumps(HUB_BERT))
    config = configuration.load_config(tmp_path / "hub")
    assert config.gradient_checkpointing is False and config.torch_dtype == "float16"
    config.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved == {**ModelConfig("bert").to_dict(), **HUB_BERT}
    assert hf_dict(tmp_path / "ours") == hf_dict(tmp_path / "hub")


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_saved_config_loads_as_transformers_would_make_it(tmp_path, model_type):
    configuration.load_config({"model_type": model_type, **SMALL}).save_pretrained(tmp_path)
    expected = transformers.AutoConfig.for_model(model_type, **SMALL).to_dict()
    expected.pop("_name_or_path")
    assert hf_dict(tmp_path) == expected


def test_transformers_config_object_is_converted():
    theirs = transformers.RobertaConfig(**SMALL)
    config = configuration.load_config(theirs)
    assert config == ModelConfig("roberta", **SMALL)
    assert configuration.load_config(config) is config


def test_copies_and_equality_are_by_value():
    config = ModelConfig("bert", id2label={"0": "A"})
    other = copy.deepcopy(config)
    assert other == config and other.to_json_string() == config.to_json_string()
    other.id2label["0"] = "B"
    assert config.id2label == {"0": "A"} and other != config
    assert ModelConfig("bert") != ModelConfig("xlm-roberta")


def test_unsupported_model_type():
    with pytest.raises(UserError, match="'gpt2'.*supported: bert, roberta, xlm-roberta"):
        ModelConfig("gpt2")


OVERRIDES = [
    "hidden_size=64,hidden_dropout_prob=0,layer_norm_eps=1e-6,hidden_act=relu",
    "tie_word_embeddings=FALSE,use_cache=0,is_decoder=Yes,add_cross_attention=n",
    "num_hidden_layers=3,num_hidden_layers=2",
]


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_overrides_cast_as_transformers_does(overrides):
    config = configuration.apply_overrides(ModelConfig("bert"), overrides)
    theirs = transformers.BertConfig()
    theirs.update_from_string(overrides)
    for key in config.to_dict():
        assert getattr(config, key) == getattr(theirs, key), key
        assert type(getattr(config, key)) is type(getattr(theirs, key)), key


@pytest.mark.parametrize("overrides", [
    "hidden_size=1.5", "hidden_size=", "use_cache=maybe", "classifier_dropout=0.1"])
def test_bad_override_values_fail_as_in_transformers(overrides):
    with pytest.raises((ValueError, TypeError)) as theirs:
        transformers.BertConfig().update_from_string(overrides)
    config, overrides = ModelConfig("bert"), f"hidden_act=relu,{overrides}"
    with pytest.raises(UserError, match=re.escape(f"config_overrides {overrides!r}: "
                                                  f"{theirs.value}")):
        configuration.apply_overrides(config, overrides)
    assert config == ModelConfig("bert")  # not even the good item is applied


@pytest.mark.parametrize("overrides, message", [
    ("hiden_size=64", "unknown config key 'hiden_size' for model_type 'bert'"),
    ("to_dict=1", "unknown config key 'to_dict'"),
    ("num_hidden_layers", "item 'num_hidden_layers' is not of the form key=value"),
    ("hidden_act=a=b", "item 'hidden_act=a=b' is not of the form key=value"),
    ("=3", "item '=3' is not of the form key=value"),
    ("model_type=gpt2", "config_overrides: unsupported model_type 'gpt2'"),
])
def test_bad_override_items_are_named(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        configuration.apply_overrides(ModelConfig("bert"), overrides)


def test_no_overrides_change_nothing():
    config = ModelConfig("bert")
    assert configuration.apply_overrides(config, None) is config
    assert configuration.apply_overrides(config, "") == ModelConfig("bert")


def test_loading_configs_imports_neither_torch_nor_transformers(tmp_path):
    code = (
        "import sys\n"
        "from model import configuration\n"
        "config = configuration.load_config({'model_type': 'roberta', 'hidden_size': 32})\n"
        "configuration.apply_overrides(config, 'num_hidden_layers=1,use_cache=false')\n"
        f"config.save_pretrained({str(tmp_path)!r})\n"
        f"assert configuration.load_config({str(tmp_path)!r}) == config\n"
        "print(sorted(m for m in ('torch', 'transformers', 'jax') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"
