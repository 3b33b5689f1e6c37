"""Pictures of an evaluation: ``dice_per_case.png`` (Dice per case and label) and
``worst_cases.png`` (image | ground truth | prediction of the lowest-Dice cases).

The worst-case sheet is built from ``CaseView``: one display-ready 2D slice per case, already
fitted to the panel size, so that keeping the worst few costs a few hundred kB whatever the
size of the volumes scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ssam.atomic import atomic_path  # noqa: E402
from ssam.data.properties import take_slice  # noqa: E402
from ssam.evaluation.report import MetricsRow  # noqa: E402
from ssam.inference.overlay import PALETTE, blend_overlay, select_slices, to_rgb  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Grid every axis, lay the figure out, write it to ``path`` (atomically) and free it."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, Path(path).suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


WORST_ROWS = 6  # cases on the worst-case sheet
PANEL = 320  # pixels: each panel fits a PANEL x PANEL box
_GAP = 6
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


@dataclass(frozen=True)
class CaseView:
    """One case as the worst-case sheet shows it.

    Attributes:
        name: the case (with its dataset when several are scored).
        dice: mean Dice over the case's labels (the sheet's order); scores: Dice per label.
        image: (H, W, 3) uint8, the slice shown at panel size.
        truth, prediction: (H, W) label maps of that slice, value k = ``labels[k - 1]``.
        where: which slice of a volume ("" for a 2D image).
    """

    name: str
    dice: float
    scores: dict[str, float]
    labels: tuple[str, ...]
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    where: str = ""


def _fit(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize(size, resample))


def make_case_view(
    name: str,
    scores: dict[str, float],
    labels: Sequence[str],
    display: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    axis: int | None = None,
    rotate: bool = False,
    scale: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CaseView:
    """The ``CaseView`` of a scored case.

    Args:
        display: the image, (C, H, W) for a 2D image or (C, I, J, K) for a volume, 0-255 or
            made so by ``scale`` (applied to the slice shown only).
        truth, prediction: label maps (values 1..L for ``labels``), (H, W) or (I, J, K).
        axis: the spatial axis to slice a volume along (None: a 2D image). The slice shown
            is the one with most ground-truth foreground (most predicted when there is none).
        rotate: turn slices 90 degrees counter-clockwise (NIfTI arrays the usual way up).
    """
    where = ""
    if axis is not None:
        index = select_slices(truth if truth.any() else prediction, axis, 1)[0]
        where = f"slice {index} of {truth.shape[axis]} (axis {axis})"
        display = take_slice(display, axis, index)
        truth, prediction = take_slice(truth, axis, index), take_slice(prediction, axis, index)
    image = to_rgb(scale(display) if scale is not None else display)
    if rotate:
        image, truth, prediction = (np.rot90(a) for a in (image, truth, prediction))
    height, width = truth.shape
    scale = PANEL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    nearest = Image.Resampling.NEAREST
    dice = float(np.mean(list(scores.values()))) if scores else math.nan
    return CaseView(
        name=name,
        dice=dice,
        scores=dict(scores),
        labels=tuple(labels),
        image=_fit(image, size, Image.Resampling.BILINEAR if scale < 1 else nearest),
        truth=_fit(truth.astype(np.uint8), size, nearest),
        prediction=_fit(prediction.astype(np.uint8), size, nearest),
        where=where,
    )


def keep_worst(views: list[CaseView], view: CaseView, count: int = WORST_ROWS) -> list[CaseView]:
    """The ``count`` lowest-Dice views of ``views`` and ``view`` (first seen first on ties)."""
    ranked = sorted([*views, view], key=lambda v: -1.0 if math.isnan(v.dice) else v.dice)
    return ranked[:count]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _panel(picture: np.ndarray) -> np.ndarray:
    """Centre ``picture`` on a PANEL x PANEL black box."""
    box = np.zeros((PANEL, PANEL, 3), np.uint8)
    top, left = (PANEL - picture.shape[0]) // 2, (PANEL - picture.shape[1]) // 2
    box[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return box


def _remap(label_map: np.ndarray, labels: Sequence[str], order: dict[str, int]) -> np.ndarray:
    """Label values of a case (1..len(labels)) -> the sheet's values (``order``)."""
    lookup = np.array([0, *(order[name] for name in labels)], dtype=np.uint8)
    return lookup[label_map]


def render_worst_cases(views: Sequence[CaseView], path: Path) -> Path:
    """``worst_cases.png``: a row per view (image | ground truth | prediction), a title over
    each row (case, mean Dice, Dice per label, the slice shown) and a colour legend."""
    if not views:
        raise ValueError("no cases to show")
    names = list(dict.fromkeys(name for v in views for name in v.labels))
    order = {name: k for k, name in enumerate(names, 1)}
    title_font, font = _font(18), _font(16)
    header, title, swatch = 30, 28, 22
    width = 3 * PANEL + 4 * _GAP
    legend_rows = -(-len(names) // 3)
    height = header + len(views) * (title + PANEL + _GAP) + legend_rows * swatch + 2 * _GAP
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for column, text in enumerate(("image", "ground truth", "prediction")):
        draw.text((_GAP + column * (PANEL + _GAP) + 4, 6), text, fill=_TEXT, font=title_font)
    top = header
    for view in views:
        per_label = ", ".join(f"{k} {d:.3f}" for k, d in view.scores.items())
        text = f"{view.name}: Dice {view.dice:.3f}"
        if len(view.scores) > 1:
            text += f" ({per_label})"
        if view.where:
            text += f", {view.where}"
        draw.text((_GAP + 4, top + 4), text, fill=_TEXT, font=font)
        top += title
        channels_first = np.moveaxis(view.image, -1, 0)  # as blend_overlay takes images
        panels = [
            view.image,
            blend_overlay(channels_first, _remap(view.truth, view.labels, order), len(names)),
            blend_overlay(channels_first, _remap(view.prediction, view.labels, order), len(names)),
        ]
        for column, picture in enumerate(panels):
            sheet.paste(Image.fromarray(_panel(picture)), (_GAP + column * (PANEL + _GAP), top))
        top += PANEL + _GAP
    top += _GAP
    for k, name in enumerate(names):
        x, y = _GAP + (k % 3) * (PANEL + _GAP), top + (k // 3) * swatch
        colour = tuple(int(c) for c in PALETTE[k % len(PALETTE)])
        draw.rectangle((x + 4, y + 3, x + 20, y + 19), fill=colour)
        draw.text((x + 28, y + 1), name, fill=_TEXT, font=font)
    with atomic_path(path, ".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


def plot_dice_per_case(rows: Sequence[MetricsRow], path: Path) -> Path:
    """``dice_per_case.png``: left, each label's Dice over the cases (box and points);
    right, every case's Dice per label, the cases sorted by their mean Dice."""
    labels = list(dict.fromkeys(r.label for r in rows))
    colours = {name: PALETTE[k % len(PALETTE)] / 255 for k, name in enumerate(labels)}
    cases: dict[str, dict[str, float]] = {}
    for row in rows:
        dataset = row.extra.get("dataset")
        cases.setdefault(row.case_id if dataset is None else f"{dataset}/{row.case_id}", {})[
            row.label
        ] = row.dice
    if len({r.extra.get("dataset") for r in rows}) == 1:
        cases = {name.split("/", 1)[-1]: scores for name, scores in cases.items()}
    ranked = sorted(cases, key=lambda c: np.nanmean(list(cases[c].values())))
    width = min(16.0, 9.0 + 0.18 * len(ranked))
    fig, (box_ax, case_ax) = plt.subplots(
        1, 2, figsize=(width, 4.8), dpi=110, gridspec_kw={"width_ratios": [1, 2.2]}
    )
    rng = np.random.default_rng(0)  # the points' horizontal jitter, the same every time
    per_label = [[r.dice for r in rows if r.label == name] for name in labels]
    box_ax.boxplot(per_label, widths=0.5, showfliers=False)
    for k, (name, values) in enumerate(zip(labels, per_label, strict=True), 1):
        x = k + rng.uniform(-0.12, 0.12, len(values))
        box_ax.scatter(x, values, s=18, color=colours[name], alpha=0.8, zorder=3)
    box_ax.set_xticks(
        range(1, len(labels) + 1),
        [f"{n}\n(n={len(v)})" for n, v in zip(labels, per_label, strict=True)],
    )
    box_ax.set(title="Dice per label", ylabel="Dice", ylim=(-0.03, 1.03))
    x = np.arange(len(ranked))
    for name in labels:
        y = [cases[c].get(name, np.nan) for c in ranked]
        case_ax.plot(x, y, "o", ms=5, color=colours[name], label=name)
    mean = [np.nanmean(list(cases[c].values())) for c in ranked]
    case_ax.plot(x, mean, "-", color="black", lw=1, alpha=0.6, label="case mean")
    if len(ranked) <= 40:
        case_ax.set_xticks(x, ranked, rotation=60, ha="right", fontsize=8)
    else:
        case_ax.set_xlabel("case (sorted)")
    case_ax.set(title="Dice per case, lowest mean first", ylim=(-0.03, 1.03))
    case_ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, path)
