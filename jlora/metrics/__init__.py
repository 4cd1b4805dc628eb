"""Metrics sinks shared by training and benchmarks."""

from jlora.metrics.tensorboard import ScalarWriter

__all__ = ["ScalarWriter"]
