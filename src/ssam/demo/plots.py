"""Pictures of a demo run: the learning curves and image | truth | prediction panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssam.evaluation.plots import save_figure  # noqa: E402
from ssam.inference.overlay import add_legend, blend_overlay, save_png, tile_images, to_rgb  # noqa: E402
from ssam.train.plots import plot_loss  # noqa: E402  (the run folders' curve's)


def plot_learning_curves(steps: list[dict], epochs: list[dict], path: Path) -> Path:
    """Training loss per step and validation Dice per epoch, side by side (PNG)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    plot_loss(axes[0], steps, "tab:blue")
    axes[0].set(title="S-SAM by label name", xlabel="step", ylabel="focal + Dice loss")
    validated = [r for r in epochs if r.get("val_dice") is not None]
    axes[1].plot([r["epoch"] + 1 for r in validated], [r["val_dice"] for r in validated], "o-")
    axes[1].set(title="validation Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    return save_figure(fig, path)


def render_panels(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    labels: Sequence[str],
    path: Path,
) -> Path:
    """Rows of image | ground truth | prediction for (case id, image, truth, prediction)
    where images are (H, W) or (C, H, W) in 0-255 and label maps use values 1..L."""
    tiles = []
    for _, image, truth, prediction in cases:
        tiles += [
            to_rgb(image),
            blend_overlay(image, truth, len(labels)),
            blend_overlay(image, prediction, len(labels)),
        ]
    grid = tile_images(tiles, columns=3)
    notes = "columns: image | ground truth | S-SAM prediction (by label name)"
    return save_png(add_legend(grid, labels, notes), path)
