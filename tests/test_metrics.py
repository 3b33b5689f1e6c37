import math

import numpy as np
import pytest
from scipy import ndimage

from ssam.evaluation.metrics import (
    EMPTY_GT_POLICY,
    EMPTY_SCORES,
    compute_case_metrics,
    compute_label_map_metrics,
)


def _box(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def _hd95_scipy(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """Reference: surface = mask minus its erosion; symmetric max of directed 95th percentiles."""
    edge_p = pred ^ ndimage.binary_erosion(pred)
    edge_g = gt ^ ndimage.binary_erosion(gt)
    d_pg = ndimage.distance_transform_edt(~edge_g, sampling=spacing)[edge_p]
    d_gp = ndimage.distance_transform_edt(~edge_p, sampling=spacing)[edge_g]
    return max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))


def test_2d_squares_hand_computed():
    # 4x4 squares offset by 2 columns: overlap 8 px; every surface distance is 0, 1 or 2 px
    # and the 95th percentile of both directed sets is 2.
    pred = _box((10, 10), (0, 0), (4, 4))
    gt = _box((10, 10), (0, 2), (4, 4))
    m = compute_case_metrics(pred, gt)
    assert m["dice"] == pytest.approx(2 * 8 / 32)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["gt_empty"] is False and m["pred_empty"] is False
    # pixel spacing (rows, cols) = (1.0, 0.5) mm: the offset is along columns
    assert compute_case_metrics(pred, gt, spacing=(1.0, 0.5))["hd95"] == pytest.approx(1.0)


def test_identical_masks():
    mask = _box((8, 9), (2, 3), (3, 4))
    assert compute_case_metrics(mask, mask) == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "gt_empty": False,
        "pred_empty": False,
    }


@pytest.mark.parametrize(("axis", "expected_mm"), [(0, 40.0), (1, 5.6), (2, 4.0)])
def test_3d_cubes_offset_anisotropic_spacing(axis, expected_mm):
    # 4x4x4 cubes at 2..5 and 10..13 along `axis`. Every surface voxel of one cube is closest
    # to the facing face of the other: distances 5, 6, 7, 8 voxels along `axis` (16, 12, 12
    # and 16 voxels); the 95th percentile falls in the far face: 8 voxels.
    spacing = (5.0, 0.7, 0.5)
    start = [2, 2, 2]
    gt = _box((16, 16, 16), start, (4, 4, 4))
    start[axis] = 10
    pred = _box((16, 16, 16), start, (4, 4, 4))
    m = compute_case_metrics(pred, gt, spacing=spacing)
    assert m["hd95"] == pytest.approx(expected_mm, rel=1e-6)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert expected_mm == pytest.approx(8 * spacing[axis])


def test_volume_is_scored_as_volume_not_slice_average():
    # slice 0: perfect; slice 1: 1 of 4 voxels predicted. 3D Dice = 2*5/(5+8), not (1+0.4)/2.
    gt = np.zeros((2, 4, 4), dtype=bool)
    gt[:, :2, :2] = True
    pred = gt.copy()
    pred[1] = False
    pred[1, 0, 0] = True
    m = compute_case_metrics(pred, gt, spacing=(3.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(10 / 13)
    assert m["iou"] == pytest.approx(5 / 8)


def test_agrees_with_scipy_distance_transform_reference():
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.normal(size=(14, 40, 36)), sigma=(1.5, 4, 4))
    noise = ndimage.gaussian_filter(rng.normal(size=field.shape), sigma=(1, 2, 2))
    gt = field > 0.02
    pred = (field + 0.6 * noise) > 0.03
    spacing = (2.5, 0.8, 0.7)
    m = compute_case_metrics(pred, gt, spacing=spacing)
    assert m["hd95"] == pytest.approx(_hd95_scipy(pred, gt, spacing), rel=1e-4)
    inter = (pred & gt).sum()
    assert m["dice"] == pytest.approx(2 * inter / (pred.sum() + gt.sum()))
    assert m["iou"] == pytest.approx(inter / (pred | gt).sum())
    m2d = compute_case_metrics(pred[5], gt[5])
    assert m2d["hd95"] == pytest.approx(_hd95_scipy(pred[5], gt[5], (1.0, 1.0)), rel=1e-4)


def test_both_empty_is_a_perfect_score():
    empty = np.zeros((6, 6), dtype=bool)
    m = compute_case_metrics(empty, empty)
    assert (m["dice"], m["iou"], m["hd95"]) == (1.0, 1.0, 0.0)
    assert m["gt_empty"] is True and m["pred_empty"] is True


def test_empty_ground_truth_with_prediction():
    empty = np.zeros((4, 6, 6), dtype=bool)
    pred = _box(empty.shape, (1, 1, 1), (2, 2, 2))
    m = compute_case_metrics(pred, empty, spacing=(2.0, 1.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and math.isnan(m["hd95"])
    assert m["gt_empty"] is True and m["pred_empty"] is False


def test_missed_structure_with_empty_prediction():
    gt = _box((6, 6), (1, 1), (2, 2))
    m = compute_case_metrics(np.zeros_like(gt), gt)
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and math.isnan(m["hd95"])
    assert m["gt_empty"] is False and m["pred_empty"] is True


def test_policy_constants_are_consistent():
    assert EMPTY_SCORES[(True, True)] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert math.isnan(EMPTY_SCORES[(True, False)]["hd95"])
    assert "NaN" in EMPTY_GT_POLICY and "excluded" in EMPTY_GT_POLICY


def test_depth_one_volume_is_scored_as_2d():
    pred = _box((10, 10), (0, 0), (4, 4))
    gt = _box((10, 10), (0, 2), (4, 4))
    m3 = compute_case_metrics(pred[None], gt[None], spacing=(5.0, 1.0, 0.5))
    assert m3["hd95"] == pytest.approx(1.0)
    assert m3["dice"] == pytest.approx(0.5)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        compute_case_metrics(np.zeros((4, 5), bool), np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2\)"):
        compute_case_metrics(np.zeros((2, 2, 2, 2), bool), np.zeros((2, 2, 2, 2), bool))


def test_bad_inputs_raise():
    mask = _box((5, 5), (1, 1), (2, 2))
    with pytest.raises(ValueError, match="spacing"):
        compute_case_metrics(mask, mask, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        compute_case_metrics(mask, mask, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="float"):
        compute_case_metrics(mask.astype(np.float32), mask)
    with pytest.raises(ValueError, match="0/1"):
        compute_case_metrics(mask.astype(np.uint8) * 2, mask)
    m = compute_case_metrics(mask.astype(np.uint8), mask)
    assert m["dice"] == 1.0


def test_label_map_metrics_skip_background():
    target = np.zeros((8, 8), dtype=np.uint8)
    target[1:4, 1:4] = 1
    pred = target.copy()
    pred[5:7, 5:7] = 2  # label 2 predicted but absent from the ground truth
    out = compute_label_map_metrics(pred, target, {"background": 0, "liver": 1, "lesion": 2})
    assert list(out) == ["liver", "lesion"]
    assert out["liver"]["dice"] == 1.0
    assert out["lesion"]["gt_empty"] is True and math.isnan(out["lesion"]["hd95"])
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(8, 7\)"):
        compute_label_map_metrics(pred, target[:, :7], {"liver": 1})


def test_no_warnings_from_monai(recwarn):
    pred = _box((12, 12, 12), (2, 2, 2), (5, 5, 5))
    gt = _box((12, 12, 12), (3, 2, 2), (5, 5, 5))
    compute_case_metrics(pred, gt, spacing=(2.0, 1.0, 1.0))
    compute_case_metrics(pred, np.zeros_like(gt))
    pred.flags.writeable = False  # e.g. np.asarray(PIL image)
    compute_case_metrics(pred, gt)
    assert [str(w.message) for w in recwarn] == []
