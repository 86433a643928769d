"""Streaming tf.data input pipeline for masked language modelling."""
