"""Per-label probabilities -> masks and a label map, and the size of each label (DESIGN.md 7).

Pure functions over numpy arrays. Each label's mask is its own probability >= 0.5, whatever
else was asked for, so masks may overlap (a lesion inside an organ); sizes count these masks.
A label map, for display and files, holds one label per pixel: the value k of the most
probable label among those at least at the threshold (labels are 1..L in the order asked
for), else background 0 (``LABEL_MAP_RULE``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.5
LABEL_MAP_RULE = (
    "per pixel the most probable label among those with probability >= 0.5 (ties: the label "
    "listed first), else 0; sizes and masks count each label on its own, overlaps included"
)


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
    masks: np.ndarray,
    labels: Sequence[str],
    spacing: Sequence[float] | None,
    is_volume: bool,
) -> dict[str, dict[str, float | int | None]]:
    """Size of each label's own mask (``masks[k - 1]`` is ``labels[k - 1]``'s).

    Masks may overlap: a pixel counts for every label whose mask holds it, so a label's size
    does not depend on the other labels asked for (the label map's one label per pixel would).

    Args:
        masks: (L, H, W) for 2D or (L, I, J, K) for a volume; bool (nonzero counts).
        labels: the L label names in label-value order.
        spacing: pixel/voxel size in mm along the spatial axes (2 or 3 values; for a 2D
            image given as (L, H, W, 1) only the first two count); None when unknown.
        is_volume: report volumes (mL) instead of areas (mm^2).

    Returns:
        name -> {"value": k, "pixels" or "voxels": count, "area_mm2" or "volume_ml": size
        (None when the spacing is unknown)}. Volume mL = voxels x voxel volume mm^3 / 1000.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2 or masks.shape[0] != len(labels):
        raise ValueError(f"masks must be (L, ...) with L = {len(labels)}, got shape {masks.shape}")
    if is_volume:
        unit_key, count_key = "volume_ml", "voxels"
        unit = None if spacing is None else float(np.prod(spacing[:3])) / 1000.0
    else:
        unit_key, count_key = "area_mm2", "pixels"
        unit = None if spacing is None else float(spacing[0]) * float(spacing[1])
    sizes: dict[str, dict[str, float | int | None]] = {}
    for value, (name, mask) in enumerate(zip(labels, masks, strict=True), start=1):
        count = int(np.count_nonzero(mask))
        sizes[name] = {
            "value": value,
            count_key: count,
            unit_key: None if unit is None else count * unit,
        }
    return sizes
