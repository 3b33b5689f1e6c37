"""The learning curve of a run folder: training loss per step, validation Dice per epoch with
the untrained model (the step-0 record) as epoch 0."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssam.evaluation.plots import save_figure  # noqa: E402


def smooth(values: list[float], width: int = 10) -> np.ndarray:
    """Moving average (``width`` points; the values themselves when fewer)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < width:
        return array
    return np.convolve(array, np.ones(width) / width, mode="valid")


def plot_loss(ax, steps: list[dict], color: str, labelled: bool = False) -> None:
    """Loss per step (faint) and its moving average (``smooth``) of ``steps`` records (``step``,
    ``loss``) on ``ax``; ``labelled``: legend labels "per step" and "smoothed"."""
    x, loss = [r["step"] for r in steps], [r["loss"] for r in steps]
    ax.plot(x, loss, alpha=0.3, color=color, label="per step" if labelled else None)
    smoothed = smooth(loss)
    ax.plot(
        x[len(x) - len(smoothed) :], smoothed, color=color, label="smoothed" if labelled else None
    )


def plot_run_curves(records: list[dict], path: Path) -> Path:
    """``learning_curve.png`` from a run's ``metrics.jsonl`` records (``read_log``)."""
    steps = [r for r in records if r["kind"] == "train" and r.get("loss") is not None]
    epochs = [r for r in records if r["kind"] == "epoch" and r.get("val_dice") is not None]
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    if steps:
        plot_loss(loss_ax, steps, "tab:blue", labelled=True)
        loss_ax.legend(fontsize=9)
    loss_ax.set(title="training loss (focal + Dice)", xlabel="optimiser step", ylabel="loss")
    trained = [r for r in epochs if r["epoch"] >= 0]
    dice_ax.plot([r["epoch"] + 1 for r in trained], [r["val_dice"] for r in trained], "o-")
    for r in epochs:
        if r["epoch"] < 0:
            dice_ax.plot([0], [r["val_dice"]], "s", color="tab:red", label="untrained")
            dice_ax.legend(fontsize=9)
    dice_ax.set(title="validation Dice", xlabel="epoch (0: untrained)", ylabel="Dice", ylim=(0, 1))
    dice_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)
