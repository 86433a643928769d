"""Hugging Face config loading for the Flax MLM models.

We reuse `transformers` configuration classes (they still exist in v5) so
`config.json` files from the hub load unchanged and export round-trips.
"""

import json
import os

from pipeline.errors import UserError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


def _check_model_type(model_type, source):
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{source}: unsupported model_type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


def _config_file(path):
    path = os.fspath(path)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def load_config(config_or_path):
    """A transformers config from a config object, a dict, a config.json or a directory."""
    # Imported here: the command line (train.py --help) imports this module for
    # SUPPORTED_MODEL_TYPES and should not wait a second for transformers.
    import transformers  # pylint: disable=import-outside-toplevel

    if isinstance(config_or_path, transformers.PretrainedConfig):
        _check_model_type(config_or_path.model_type, "config")
        return config_or_path
    if isinstance(config_or_path, dict):
        values = dict(config_or_path)
        source = "config dict"
    else:
        source = _config_file(config_or_path)
        if not os.path.isfile(source):
            raise UserError(f"{source}: no config.json found")
        try:
            with open(source, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}: line {e.lineno}: invalid JSON ({e.msg})") from e
    if "model_type" not in values:
        raise UserError(f"{source}: field 'model_type' is missing; expected one of "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    model_type = values.pop("model_type")
    _check_model_type(model_type, source)
    return transformers.AutoConfig.for_model(model_type, **values)


def apply_overrides(config, overrides):
    """Apply a run_mlm_flax.py style "key=value,key=value" string in place.

    Values are cast to the type of the existing attribute (transformers'
    `update_from_string`); an unknown key or a malformed item is an error.
    """
    if not overrides:
        return config
    for item in overrides.split(","):
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"config_overrides: item {item!r} is not of the form key=value")
        if not hasattr(config, key):
            raise UserError(f"config_overrides: unknown config key {key!r} "
                            f"for model_type {config.model_type!r}")
    try:
        config.update_from_string(overrides)
    except ValueError as e:
        raise UserError(f"config_overrides {overrides!r}: {e}") from e
    return config
