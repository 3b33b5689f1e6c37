"""Resumable training state: trainable tensors, optimiser, scheduler, counters, RNG.

Written atomically (temporary file, then rename) and read back with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ssam.atomic import atomic_path
from ssam.errors import CheckpointError
from ssam.sam.checkpoint import load_untrusted

STATE_FILE = "state.pt"


@dataclass
class Progress:
    """Where a run stands: the next epoch to run, optimiser steps so far, steps done in the
    current epoch and the sum of their losses (so that a resumed epoch's mean loss counts the
    steps before the interruption too), and the best validation score (with its epoch)."""

    epoch: int = 0
    step: int = 0
    steps_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    best_score: float | None = None
    best_epoch: int | None = None


def save_training_state(
    path: Path, tensors: dict, optimizer: dict, scheduler: dict, progress: Progress, config: dict
) -> None:
    payload = {
        "tensors": tensors,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "progress": vars(progress),
        "config": config,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_training_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    payload = load_untrusted(path, "training state")
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a training state (a {type(payload).__name__})")
    missing = {"tensors", "optimizer", "scheduler", "progress", "config"} - set(payload)
    if missing:
        raise CheckpointError(f"{path}: training state lacks {sorted(missing)}")
    payload["progress"] = Progress(**payload["progress"])
    return payload
