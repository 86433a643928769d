"""Flax BERT and RoBERTa for masked language modelling, with Hugging Face checkpoint I/O."""
