"""Streaming tf.data input pipeline for masked language modelling.

Importing the package sets TensorFlow's logging defaults before any module of
it loads TensorFlow, so every entry point (train.py, `python -m
pipeline.preview`, the benchmarks) starts without TensorFlow's C++ start-up
chatter; oneDNN speeds up no tf.data op used here. A value already set wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
