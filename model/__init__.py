"""Flax BERT and RoBERTa for masked language modelling, with Hugging Face checkpoint I/O."""

from model.checkpoint_io import from_config, from_pretrained, save_pretrained

__all__ = ["from_config", "from_pretrained", "save_pretrained"]
