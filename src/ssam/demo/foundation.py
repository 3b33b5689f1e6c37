"""Stage 1 of the offline demo: pre-train a small SAM with box prompts (the foundation model's
role), on phantom structures other than the ones S-SAM will then learn by name.

S-SAM tunes a pretrained SAM; a randomly initialised network has nothing worth tuning. Without
internet there is no official checkpoint, so the demo makes a small one: every SAM weight
trains, prompted by jittered boxes around the structures, as SAM itself was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ssam.config.data import DatasetConfig
from ssam.data.layouts import load_cases
from ssam.data.samples import build_samples
from ssam.model import SSAM
from ssam.sam.build import build_random_sam
from ssam.sam.variants import SamSpec
from ssam.text import TextAffine
from ssam.train.losses import segmentation_loss
from ssam.train.validate import compute_batch_dice

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass
class FoundationResult:
    state_dict: dict[str, torch.Tensor]  # official SAM key layout
    history: list[dict]  # {"step", "loss", "dice"}
    box_dice: float  # mean Dice with box prompts on held-out phantoms


def compute_boxes(masks: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """(B, S, S) binary masks -> (B, 4) XYXY boxes around them, each side moved by up to
    ``jitter`` x S pixels (uniform), clamped to the image. Empty masks get the whole image."""
    size = masks.shape[-1]
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask > 0, as_tuple=True)
        if len(xs) == 0:
            boxes.append(torch.tensor([0.0, 0.0, size - 1.0, size - 1.0]))
            continue
        box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        noise = (torch.rand(4, generator=generator) - 0.5) * 2 * jitter * size
        boxes.append(box + noise)
    return torch.stack(boxes).clamp(0, size - 1)


def pretrain_foundation(
    spec: SamSpec,
    dataset: DatasetConfig,
    image_size: int,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> FoundationResult:
    """Train all weights of a seeded random SAM ``spec`` with box prompts on ``dataset``."""
    torch.manual_seed(seed)
    sam = build_random_sam(spec, seed, image_size)
    model = SSAM(sam, TextAffine(512, spec.prompt_embed_dim), None, image_size)
    cases = load_cases(dataset)
    held_out = max(1, len(cases) // 10)
    train_set = build_samples(dataset, cases[held_out:], image_size, train=True, seed=seed)
    val_set = build_samples(dataset, cases[:held_out], image_size, train=False, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(seed)
    history, step, epoch = [], 0, 0
    model.train()
    while step < steps:
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
        for batch in loader:
            boxes = compute_boxes(batch["mask"], 0.05, generator)
            logits = model(batch["image"], boxes=boxes)
            loss = segmentation_loss(logits, batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            dice = compute_batch_dice(logits, batch["mask"]).mean().item()
            history.append({"step": step, "loss": loss.item(), "dice": dice})
            if on_step is not None:
                on_step(step, loss.item(), dice)
            if step >= steps:
                break
        epoch += 1
    return FoundationResult(_sam_state(model), history, _box_dice(model, val_set, generator))


@torch.no_grad()
def _box_dice(model: SSAM, dataset, generator: torch.Generator) -> float:
    model.eval()
    scores = []
    for batch in DataLoader(dataset, batch_size=16):
        logits = model(batch["image"], boxes=compute_boxes(batch["mask"], 0.0, generator))
        scores.append(compute_batch_dice(logits, batch["mask"]))
    return torch.cat(scores).mean().item()


def _sam_state(model: SSAM) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(SAM_PREFIXES)
    }
