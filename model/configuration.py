"""Model configs: Hugging Face `config.json` files without transformers.

transformers 5 imports PyTorch with its config classes (half a gigabyte and
over a second per process), and the trainer never needs torch. ModelConfig
knows the BERT-encoder fields and transformers' defaults for them, keeps
every other key of a config.json as it found it, and writes a config.json
that transformers loads to the same values.
"""

import copy
import json
import os

from pipeline.errors import UserError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

# transformers' BertConfig defaults (RobertaConfig and XLMRobertaConfig change
# the vocabulary and the special tokens).
_BERT = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None,
    "use_cache": True, "classifier_dropout": None, "is_decoder": False,
    "add_cross_attention": False, "tie_word_embeddings": True,
}
_ROBERTA_TOKENS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
DEFAULTS = {
    "bert": _BERT,
    "roberta": {**_BERT, **_ROBERTA_TOKENS, "vocab_size": 50265},
    "xlm-roberta": {**_BERT, **_ROBERTA_TOKENS},
}

# The words transformers' update_from_string reads as booleans.
_TRUE, _FALSE = ("true", "1", "y", "yes"), ("false", "0", "n", "no")


def _check_model_type(model_type, source):
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{source}: unsupported model_type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


class ModelConfig:
    """A BERT/RoBERTa config: its fields are attributes, unset ones take transformers' defaults.

    Keys it does not know (id2label, dtype, transformers_version, ...) are kept
    as attributes too, so a hub config.json round-trips.
    """

    # Unset, as in transformers, until an export names the model class: then it is saved.
    architectures = None

    def __init__(self, model_type, /, **values):
        _check_model_type(model_type, "config")
        self.__dict__.update(copy.deepcopy(DEFAULTS[model_type]), **values)
        self.model_type = model_type

    def __eq__(self, other):
        if not isinstance(other, ModelConfig):
            return NotImplemented
        return vars(self) == vars(other)

    def __repr__(self):
        return f"ModelConfig({self.to_dict()!r})"

    def to_dict(self):
        return copy.deepcopy(vars(self))

    def to_json_string(self):
        """The config as JSON: sorted keys, so equal configs give equal strings (and hashes)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory):
        """Write directory/config.json (a local directory, made if missing)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())


def _config_file(path):
    path = os.fspath(path)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def _read_json(source):
    if not os.path.isfile(source):
        raise UserError(f"{source}: no config.json found")
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: line {e.lineno}: invalid JSON ({e.msg})") from e


def load_config(config_or_path):
    """A ModelConfig from a config object, a dict, a config.json or a directory holding one.

    A transformers config object is read through its to_diff_dict (the values
    it would save), less transformers_version: that names the running library,
    not the config.
    """
    if isinstance(config_or_path, ModelConfig):
        _check_model_type(config_or_path.model_type, "config")
        return config_or_path
    if hasattr(config_or_path, "to_diff_dict"):
        values = config_or_path.to_diff_dict()
        values.pop("transformers_version", None)
        source = "config"
    elif isinstance(config_or_path, dict):
        values = copy.deepcopy(config_or_path)
        source = "config dict"
    else:
        source = _config_file(config_or_path)
        values = _read_json(source)
    if "model_type" not in values:
        raise UserError(f"{source}: field 'model_type' is missing; expected one of "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    model_type = values.pop("model_type")
    _check_model_type(model_type, source)
    return ModelConfig(model_type, **values)


def _cast(key, old, text):
    """`text` as the type of the current value `old`, by transformers' update_from_string rules."""
    if isinstance(old, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"can't derive true or false from {text} (key {key})")
    if isinstance(old, (int, float)):
        return type(old)(text)
    if isinstance(old, str):
        return text
    raise ValueError("You can only update int, float, bool or string values in the config, "
                     f"got {text} for key {key}")


def apply_overrides(config, overrides):
    """Apply a run_mlm_flax.py style "key=value,key=value" string in place.

    Values are cast to the type of the existing attribute (as transformers'
    `update_from_string` does); an unknown key or a malformed item is an
    error, and then nothing is changed.
    """
    if not overrides:
        return config
    items = {}
    for item in overrides.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or "=" in value:
            raise UserError(f"config_overrides: item {item!r} is not of the form key=value")
        if key not in vars(config):
            raise UserError(f"config_overrides: unknown config key {key!r} "
                            f"for model_type {config.model_type!r}")
        items[key] = value
    try:
        values = {key: _cast(key, getattr(config, key), text) for key, text in items.items()}
    except ValueError as e:
        raise UserError(f"config_overrides {overrides!r}: {e}") from e
    _check_model_type(values.get("model_type", config.model_type), "config_overrides")
    vars(config).update(values)
    return config
