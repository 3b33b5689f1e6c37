"""Validation during training: Dice per (image or slice, label) sample, for model selection.

The full per-case evaluation at the original resolution (volumes as volumes, HD95 in mm) is
``ssam evaluate``; here speed matters: samples are scored at the model's input size with
MONAI's Dice, an empty target predicted empty scoring 1 and predicted non-empty scoring 0.
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from torch.utils.data import DataLoader, Dataset


def compute_batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per sample: logits (B, 1, S, S) thresholded at 0, target (B, S, S) -> (B,)."""
    pred = (logits.detach() > 0).float()
    return compute_dice(pred, target[:, None].float(), include_background=True, ignore_empty=False)[
        :, 0
    ]


@torch.no_grad()
def validate(model, dataset: Dataset, batch_size: int, device: torch.device, autocast) -> dict:
    """Mean Dice over all samples, over positive samples, and the share of empty targets
    predicted empty. ``model`` is switched to eval mode and back."""
    was_training = model.training
    model.eval()
    scores, positive = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast():
            logits = model(batch["image"].to(device), list(batch["label"]))
        scores.append(compute_batch_dice(logits.float(), batch["mask"].to(device)).cpu())
        positive.append(batch["positive"])
    model.train(was_training)
    dice, pos = torch.cat(scores), torch.cat(positive).bool()
    return {
        "dice": dice.mean().item(),
        "dice_positive": dice[pos].mean().item() if pos.any() else float("nan"),
        "empty_correct": dice[~pos].mean().item() if (~pos).any() else float("nan"),
        "n": int(dice.numel()),
    }
