"""Training: data assembly, deterministic batches, the loop, resumable state, logs."""

from ssam.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
