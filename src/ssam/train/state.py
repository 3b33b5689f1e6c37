"""Resumable training state: trainable tensors, optimiser, scheduler, counters, RNG.

Written atomically (temporary file, then rename) and read back with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ssam.atomic import atomic_path
from ssam.errors import CheckpointError

STATE_FILE = "state.pt"


@dataclass
class Progress:
    """Where a run stands: the next epoch to run, optimiser steps so far, steps done in the
    current epoch, and the best validation score (with its epoch)."""

    epoch: int = 0
    step: int = 0
    steps_in_epoch: int = 0
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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(f"{path}: unreadable training state ({str(err)[:200]})") from None
    missing = {"tensors", "optimizer", "scheduler", "progress", "config"} - set(payload)
    if missing:
        raise CheckpointError(f"{path}: training state lacks {sorted(missing)}")
    payload["progress"] = Progress(**payload["progress"])
    return payload
