"""Overlay pictures of label maps: colour fill plus outline, a legend, tiled volume slices.

Pure numpy except ``save_png`` and the legend text (Pillow's built-in font, no files).
Images are (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ssam.atomic import atomic_path
from ssam.data.io import take_slice

# Distinct colours (Tableau 10 order); label k gets PALETTE[(k - 1) % 10].
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
        (23, 190, 207),
        (127, 127, 127),
    ],
    dtype=np.uint8,
)
_GAP = 4
_LEGEND_ROW = 14


def label_colours(n_labels: int) -> np.ndarray:
    """(n_labels + 1, 3) uint8: row 0 (background) black, row k the colour of label k."""
    rows = [np.zeros(3, np.uint8)] + [PALETTE[k % len(PALETTE)] for k in range(n_labels)]
    return np.stack(rows)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (C, H, W), C in 1..3, values 0-255 -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[0] if image.shape[0] < 3 else np.moveaxis(image[:3], 0, -1)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def compute_outline(label_map: np.ndarray) -> np.ndarray:
    """(H, W) -> bool (H, W): labelled pixels with a 4-neighbour of another value."""
    padded = np.pad(label_map, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(label_map.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + label_map.shape[0], dx : dx + label_map.shape[1]] != centre
    return differs & (label_map > 0)


def blend_overlay(
    image: np.ndarray, label_map: np.ndarray, n_labels: int, alpha: float = 0.4
) -> np.ndarray:
    """Image (H, W) / (C, H, W) in 0-255 and label map (H, W) -> (H, W, 3) uint8.

    Labelled pixels are mixed with their label colour (``alpha``), outlines drawn solid.
    """
    rgb = to_rgb(image).astype(np.float32)
    if rgb.shape[:2] != label_map.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label map {label_map.shape} differ in size")
    colours = label_colours(n_labels).astype(np.float32)[label_map.astype(np.int64)]
    inside = (label_map > 0)[..., None]
    out = np.where(inside, (1 - alpha) * rgb + alpha * colours, rgb)
    outline = compute_outline(label_map)
    out[outline] = colours[outline]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def select_slices(label_map: np.ndarray, axis: int, count: int) -> list[int]:
    """Indices of the ``count`` slices along ``axis`` with most foreground, in index order;
    evenly spaced slices when fewer than ``count`` slices hold any foreground."""
    n = label_map.shape[axis]
    count = max(1, min(count, n))
    other = tuple(a for a in range(label_map.ndim) if a != axis)
    foreground = np.count_nonzero(label_map, axis=other)
    ranked = [int(i) for i in np.argsort(-foreground, kind="stable") if foreground[i] > 0]
    chosen = ranked[:count]
    if len(chosen) < count:
        spaced = np.linspace(0, n - 1, count + 2)[1:-1].round().astype(int)
        chosen += [int(i) for i in spaced if int(i) not in chosen][: count - len(chosen)]
    return sorted(chosen)


def tile_images(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """(H_i, W_i, 3) images -> one (H, W, 3) grid, ``columns`` per row, black gaps."""
    if not images:
        raise ValueError("no images to tile")
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.zeros(
        (rows * height + (rows - 1) * _GAP, columns * width + (columns - 1) * _GAP, 3), np.uint8
    )
    for n, image in enumerate(images):
        top, left = (n // columns) * (height + _GAP), (n % columns) * (width + _GAP)
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    return grid


def add_legend(image: np.ndarray, labels: Sequence[str], notes: str = "") -> np.ndarray:
    """Append a strip under ``image`` naming each label in its colour (and ``notes``)."""
    colours = label_colours(len(labels))
    lines = [(f"{k} {name}", tuple(int(c) for c in colours[k])) for k, name in enumerate(labels, 1)]
    if notes:
        lines.append((notes, (200, 200, 200)))
    strip = Image.new("RGB", (image.shape[1], _LEGEND_ROW * len(lines) + 4), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for row, (text, colour) in enumerate(lines):
        draw.text((4, 2 + row * _LEGEND_ROW), text, fill=colour, font=font)
    return np.concatenate([image, np.asarray(strip)], axis=0)


def render_volume_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    n_labels: int,
    axis: int,
    count: int = 4,
    rotate: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Tiled overlays of the ``count`` slices with most foreground.

    Args:
        image: (C, I, J, K) in 0-255; label_map: (I, J, K).
        axis: spatial axis to slice; rotate: show each slice rotated 90 degrees
            counter-clockwise (NIfTI RAS arrays then look the usual way up).

    Returns:
        (H, W, 3) uint8 picture and the slice indices shown.
    """
    indices = select_slices(label_map, axis, count)
    tiles = []
    for index in indices:
        pixels = take_slice(image, axis, index)
        labels = take_slice(label_map, axis, index)
        tile = blend_overlay(pixels, labels, n_labels)
        tiles.append(np.ascontiguousarray(np.rot90(tile)) if rotate else tile)
    return tile_images(tiles, columns=min(4, len(tiles))), indices


def save_png(image: np.ndarray, path: Path | str) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 picture as PNG, atomically (never half a file)."""
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path
