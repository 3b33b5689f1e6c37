"""Validation during training: Dice per (image or slice, label) sample, for model selection.

The full per-case evaluation at the original resolution (volumes as volumes, HD95 in mm) is
``ssam evaluate``; here speed matters: samples are scored at the model's input size with
MONAI's Dice, an empty target predicted empty scoring 1 and predicted non-empty scoring 0.
Several processes split the validation set (``score_samples`` with a shard) and gather the
scores, so each sample is scored once.
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm


def compute_batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per sample: logits (B, 1, S, S) thresholded at 0, target (B, S, S) -> (B,)."""
    pred = (logits.detach() > 0).float()
    return compute_dice(pred, target[:, None].float(), include_background=True, ignore_empty=False)[
        :, 0
    ]


def forward_batch(model, batch: dict, device: torch.device, rows: slice | None = None):
    """Logits of ``rows`` (default all) of a collated batch of samples: from its images, or
    from their stored embeddings (``"embedding"``, ``ssam.train.embeddings``); the label
    tokens of the whole batch (see ``SSAM.forward``)."""
    rows = slice(None) if rows is None else rows
    labels = list(batch["label"])
    if "embedding" in batch:
        return model(None, labels, rows=rows, embeddings=batch["embedding"][rows].to(device))
    return model(batch["image"][rows].to(device), labels, rows=rows)


@torch.no_grad()
def score_samples(
    model,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    autocast,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> tuple[list[float], list[bool]]:
    """Dice and positiveness of the samples of ``dataset`` in ``shard`` = (index, count): every
    count-th sample from the index-th, so that processes split the set between them.
    ``model`` is switched to eval mode and back. ``progress``: a bar over this shard's
    batches (pass it from the main process only)."""
    index, count = shard
    was_training = model.training
    model.eval()
    scores, positive = [], []
    subset = Subset(dataset, range(index, len(dataset), count))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    shown = None if progress else True  # None: on a terminal only (a log file gets no bars)
    for batch in tqdm(loader, desc="validation", unit="batch", disable=shown, leave=False):
        with autocast():
            logits = forward_batch(model, batch, device)
        scores += compute_batch_dice(logits.float(), batch["mask"].to(device)).tolist()
        positive += batch["positive"].bool().tolist()
    model.train(was_training)
    return scores, positive


def summarise_scores(scores: list[float], positive: list[bool]) -> dict:
    """Mean Dice over all samples, over positive samples, and the share of empty targets
    predicted empty (NaN where there are none)."""
    dice, pos = torch.tensor(scores, dtype=torch.float64), torch.tensor(positive, dtype=torch.bool)
    return {
        "dice": dice.mean().item() if dice.numel() else float("nan"),
        "dice_positive": dice[pos].mean().item() if pos.any() else float("nan"),
        "empty_correct": dice[~pos].mean().item() if (~pos).any() else float("nan"),
        "n": int(dice.numel()),
    }


def validate(model, dataset: Dataset, batch_size: int, device: torch.device, autocast) -> dict:
    """``summarise_scores`` of all samples of ``dataset``, in one process."""
    return summarise_scores(*score_samples(model, dataset, batch_size, device, autocast))
