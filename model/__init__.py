"""Flax BERT and RoBERTa for masked language modelling, with Hugging Face checkpoint I/O.

The functions load on first use (they import JAX and Flax), so that a light
submodule (model.configuration's SUPPORTED_MODEL_TYPES, named in train.py's
--help) imports in milliseconds.
"""

import importlib

__all__ = ["from_config", "from_pretrained", "save_pretrained"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("model.checkpoint_io"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
