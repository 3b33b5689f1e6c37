"""Per-label probabilities -> masks and a label map, and the size of each label (DESIGN.md 7).

Pure functions over numpy arrays. A label map holds, per pixel, the value k of the label of
highest probability where that probability is at least the threshold (labels are 1..L in the
order asked for), else background 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.5


def compute_masks(probabilities: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(L, ...) float probabilities in [0, 1] -> (L, ...) bool, probability >= threshold."""
    return np.asarray(probabilities) >= threshold


def label_map_dtype(n_labels: int) -> np.dtype:
    """uint8 up to 255 labels, else uint16."""
    return np.dtype(np.uint8) if n_labels <= 255 else np.dtype(np.uint16)


def compute_label_map(probabilities: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(L, ...) probabilities -> (...) label map, uint8 (uint16 above 255 labels).

    Per pixel: 1 + argmax over labels where the highest probability is >= ``threshold``,
    else 0. Ties go to the label listed first. Agrees with ``compute_masks``: a pixel holds
    label k only if mask k is set there, and 0 only if no mask is set there.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim < 2 or probabilities.shape[0] == 0:
        raise ValueError(
            f"probabilities must be (L, ...) with L >= 1, got shape {probabilities.shape}"
        )
    best = probabilities.argmax(axis=0)
    peak = np.take_along_axis(probabilities, best[None], axis=0)[0]
    dtype = label_map_dtype(probabilities.shape[0])
    return np.where(peak >= threshold, best + 1, 0).astype(dtype)


def compute_label_sizes(
    label_map: np.ndarray,
    labels: Sequence[str],
    spacing: Sequence[float] | None,
    is_volume: bool,
) -> dict[str, dict[str, float | int | None]]:
    """Size of each label of ``label_map`` (value k = ``labels[k - 1]``).

    Args:
        label_map: (H, W) for 2D or (I, J, K) for a volume; integer values.
        labels: the L label names in label-value order.
        spacing: pixel/voxel size in mm along the array's axes (2 or 3 values; for a 2D
            image given as (H, W, 1) only the first two count); None when unknown.
        is_volume: report volumes (mL) instead of areas (mm^2).

    Returns:
        name -> {"value": k, "pixels" or "voxels": count, "area_mm2" or "volume_ml": size
        (None when the spacing is unknown)}. Volume mL = voxels x voxel volume mm^3 / 1000.
    """
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(labels) + 1)
    if is_volume:
        unit_key, count_key = "volume_ml", "voxels"
        unit = None if spacing is None else float(np.prod(spacing[:3])) / 1000.0
    else:
        unit_key, count_key = "area_mm2", "pixels"
        unit = None if spacing is None else float(spacing[0]) * float(spacing[1])
    sizes: dict[str, dict[str, float | int | None]] = {}
    for value, name in enumerate(labels, start=1):
        count = int(counts[value])
        sizes[name] = {
            "value": value,
            count_key: count,
            unit_key: None if unit is None else count * unit,
        }
    return sizes
