"""Per-case, per-label segmentation metrics: Dice, IoU and HD95 (DESIGN.md section 7).

Masks are scored at their original resolution. A volume ``(D, H, W)`` is scored as one 3D
object (not as an average over slices), with HD95 in the units of ``spacing`` (mm for
medical volumes); a 2D image ``(H, W)`` with ``spacing=None`` gives HD95 in pixels. A volume
of depth one ``(1, H, W)`` is scored as the 2D image it is (its last two spacings apply).

The maths is MONAI's (``compute_dice``, ``compute_iou``, ``compute_hausdorff_distance`` with
``percentile=95``): surface voxels are those removed by one binary erosion, HD95 is the
larger of the two directed 95th-percentile surface distances (linear interpolation).

Empty masks (see ``EMPTY_GT_POLICY``):

* ground truth and prediction both empty: Dice 1, IoU 1, HD95 0 (a correct "absent");
* exactly one of them empty: Dice 0, IoU 0, HD95 NaN. A surface distance to nothing is
  undefined; the NaN is reported per case, excluded from HD95 means, and the number of
  exclusions is counted (``ssam.evaluation.report.MetricsTable``). Dice 0 already penalises the case.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "EMPTY_GT_POLICY",
    "EMPTY_SCORES",
    "METRIC_NAMES",
    "compute_case_metrics",
    "compute_label_map_metrics",
]

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95")

# (gt_empty, pred_empty) -> scores; the case (False, False) is computed.
EMPTY_SCORES: dict[tuple[bool, bool], dict[str, float]] = {
    (True, True): {"dice": 1.0, "iou": 1.0, "hd95": 0.0},
    (True, False): {"dice": 0.0, "iou": 0.0, "hd95": math.nan},
    (False, True): {"dice": 0.0, "iou": 0.0, "hd95": math.nan},
}

EMPTY_GT_POLICY = (
    "Ground truth and prediction both empty: Dice 1, IoU 1, HD95 0. "
    "Exactly one of them empty (a false positive on an absent label, or a missed label): "
    "Dice 0, IoU 0, HD95 NaN; NaN HD95 values are reported per case, excluded from HD95 "
    "means, and counted as n_hd95_excluded."
)


def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    """Return a bool view/copy; integers must be 0/1, floats are refused (threshold first)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer) and np.isin(array, (0, 1)).all():
        return array.astype(bool)
    raise ValueError(
        f"{name} must be a boolean mask (or integer 0/1), got dtype {array.dtype}; "
        "threshold probabilities or select a label (labels == k) first"
    )


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing must be {ndim} positive numbers in array axis order, got {tuple(spacing)}"
        )
    return values


def _crop_to_union(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union (no metric depends on the rest)."""
    union = pred | target
    box = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=others))
        box.append(slice(hits[0], hits[-1] + 1))
    return pred[tuple(box)], target[tuple(box)]


def compute_case_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
) -> dict[str, float | bool]:
    """Dice, IoU and HD95 of one binary prediction against its ground truth.

    Args:
        pred: predicted mask, ``(H, W)`` or ``(D, H, W)``, bool (or integer 0/1).
        target: ground-truth mask of the same shape and kind.
        spacing: physical size of a pixel/voxel along each array axis, in that order
            (``(sy, sx)`` or ``(sz, sy, sx)``, e.g. mm). ``None``: 1 per axis, so HD95 is
            in pixels/voxels. Anisotropic spacing is supported.

    Returns:
        ``{"dice": float in [0, 1], "iou": float in [0, 1], "hd95": float >= 0 or NaN,
        "gt_empty": bool, "pred_empty": bool}``. Empty masks follow ``EMPTY_GT_POLICY``.

    Raises:
        ValueError: shapes differ, are not 2D/3D, masks are not binary, or ``spacing``
            does not have one positive entry per axis.
    """
    pred = _as_mask(pred, "pred")
    target = _as_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {pred.shape} "
            f"and target {target.shape}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (D, H, W), got shape {pred.shape}")
    sp = _check_spacing(spacing, pred.ndim)
    if pred.ndim == 3 and pred.shape[0] == 1:  # a 2D image stored as a volume of depth one
        pred, target, sp = pred[0], target[0], sp[1:]

    gt_empty, pred_empty = not target.any(), not pred.any()
    flags = {"gt_empty": gt_empty, "pred_empty": pred_empty}
    if gt_empty or pred_empty:
        return {**EMPTY_SCORES[(gt_empty, pred_empty)], **flags}

    # imported here: monai.metrics takes seconds to import, and ssam.evaluation.report needs only the policy
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    pred, target = _crop_to_union(pred, target)
    # (1, 1, *spatial): batch, channel; astype copies, so read-only inputs are fine
    y_pred = torch.from_numpy(pred.astype(np.float32))[None, None]
    y = torch.from_numpy(target.astype(np.float32))[None, None]
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)
    iou = compute_iou(y_pred, y, include_background=True, ignore_empty=False)
    with warnings.catch_warnings():  # MONAI 1.5-1.6 trips its own deprecation notice
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=list(sp)
        )
    return {
        "dice": float(dice.item()),
        "iou": float(iou.item()),
        "hd95": float(hd95.item()),
        **flags,
    }


def compute_label_map_metrics(
    pred_labels: np.ndarray,
    target_labels: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float] | None = None,
) -> dict[str, dict[str, float | bool]]:
    """``compute_case_metrics`` for every foreground label of two integer label maps.

    Args:
        pred_labels: predicted label map ``(H, W)`` or ``(D, H, W)``, integer dtype.
        target_labels: ground-truth label map of the same shape.
        labels: label name -> integer value (nnU-Net ``dataset.json`` style); the value 0
            (background) is skipped, whatever its name.
        spacing: as in ``compute_case_metrics``.

    Returns:
        ``{label name: metrics dict}`` in the order of ``labels``.
    """
    pred_labels, target_labels = np.asarray(pred_labels), np.asarray(target_labels)
    if pred_labels.shape != target_labels.shape:
        raise ValueError(
            f"pred_labels and target_labels must have the same shape, got "
            f"{pred_labels.shape} and {target_labels.shape}"
        )
    return {
        name: compute_case_metrics(pred_labels == value, target_labels == value, spacing)
        for name, value in labels.items()
        if value != 0
    }
