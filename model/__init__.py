"""Flax BERT and RoBERTa for masked language modelling, with Hugging Face checkpoint I/O.

The functions load on first use (they import JAX and Flax), so that a light
submodule (model.configuration's SUPPORTED_MODEL_TYPES, named in train.py's
--help) imports in milliseconds.
"""

import importlib

_HOMES = {"from_config": "model.build", "from_pretrained": "model.checkpoint_io",
          "save_pretrained": "model.checkpoint_io"}
__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
