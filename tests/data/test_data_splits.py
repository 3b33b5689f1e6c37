"""Splits are by case (or patient group), deterministic for a seed, and honour nnU-Net folds."""

from __future__ import annotations

import json

import pytest

from ssam.config.data import SplitConfig
from ssam.data.layouts import discover_nnunet_cases
from ssam.data.samples import SegmentationSamples
from ssam.data.splits import group_key, split_by_fraction, split_dataset
from ssam.errors import DataError


def _ids(cases):
    return [c.case_id for c in cases]


def test_fraction_split_is_disjoint_complete_and_deterministic(shared_data_dir):
    cases = discover_nnunet_cases(shared_data_dir / "curvas-ct")
    train, val = split_by_fraction(cases, 0.25, seed=3)
    assert not set(_ids(train)) & set(_ids(val))
    assert sorted(_ids(train) + _ids(val)) == sorted(_ids(cases))
    assert len(val) == 9
    again = split_by_fraction(list(reversed(cases)), 0.25, seed=3)
    assert set(_ids(again[1])) == set(_ids(val))  # independent of discovery order
    other = split_by_fraction(cases, 0.25, seed=4)
    assert set(_ids(other[1])) != set(_ids(val))


def test_group_pattern_keeps_each_patient_on_one_side(shared_data_dir):
    cases = discover_nnunet_cases(shared_data_dir / "curvas-ct")
    pattern = r"^(curvas_\d+)_"
    assert group_key("curvas_10001_458", pattern) == "curvas_10001"
    split = split_dataset(
        cases, SplitConfig(val_fraction=0.3, seed=0, group_pattern=pattern), shared_data_dir
    )
    train_patients = {group_key(c.case_id, pattern) for c in split.train}
    val_patients = {group_key(c.case_id, pattern) for c in split.val}
    assert val_patients and train_patients and not train_patients & val_patients


def test_slices_of_a_volume_never_straddle_the_split(tmp_path, make_nnunet_3d):
    cases = discover_nnunet_cases(make_nnunet_3d(tmp_path / "ds", n=4), channels=[0])
    train, val = split_by_fraction(cases, 0.5, seed=0)
    train_samples = SegmentationSamples(train, 32, neg_ratio=None)
    val_samples = SegmentationSamples(val, 32, neg_ratio=None)
    train_ids = {train_samples.cases[r.case_index].case_id for r in train_samples.refs}
    val_ids = {val_samples.cases[r.case_index].case_id for r in val_samples.refs}
    assert len(train_ids) == len(val_ids) == 2 and not train_ids & val_ids


def test_nnunet_splits_final_and_test_set(tmp_path, make_nnunet_2d):
    root = make_nnunet_2d(tmp_path / "ds", n=4)
    cases = discover_nnunet_cases(root)
    config = SplitConfig(source="dataset", fold=1)
    with pytest.raises(DataError, match=r"splits_final\.json: split source 'dataset'"):
        split_dataset(cases, config, root)
    folds = [
        {"train": ["case0", "case1", "case2"], "val": ["case3"]},
        {"train": ["case1", "case2", "case3"], "val": ["case0"]},
    ]
    (root / "splits_final.json").write_text(json.dumps(folds))
    tests = cases[:1]
    split = split_dataset(cases, config, root, test_cases=tests)
    assert _ids(split.val) == ["case0"] and _ids(split.train) == ["case1", "case2", "case3"]
    assert split.test == tests
    with pytest.raises(DataError, match="fold 5 requested"):
        split_dataset(cases, SplitConfig(source="dataset", fold=5), root)
    with pytest.warns(UserWarning, match="unknown cases"):
        split_dataset(cases[1:], config, root)
