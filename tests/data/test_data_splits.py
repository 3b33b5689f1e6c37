"""Splits are by case (or patient group), deterministic for a seed, and honour nnU-Net folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssam.config.data import SplitConfig
from ssam.data.cases import Case
from ssam.data.fingerprints import find_near_duplicates
from ssam.data.layouts import discover_folder_cases, discover_nnunet_cases
from ssam.data.samples import SegmentationSamples
from ssam.data.splits import (
    DEFAULT_GROUP_PATTERN,
    SplitLeakWarning,
    group_key,
    infer_groups,
    split_by_fraction,
    split_dataset,
)
from ssam.errors import DataError

LABELS = {"background": 0, "liver": 1, "kidney": 2}


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


def _write_pairs(root, names, size=(24, 28)):
    """A folder-layout dataset of real PNG pairs named ``names``."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        mask = np.zeros(size, np.uint8)
        mask[4 + i % 5 : 14, 6:18] = 255
        Image.fromarray(mask // 2 + 40).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _nnunet_slices(root, patients=4, slices=5):
    """An nnU-Net 2D dataset whose cases are slices ``pat{P}_{S}`` of a few patients, with a
    ``splits_final.json`` that keeps each patient on one side (what nnU-Net users ship)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ".png"})
    )
    ids = [f"pat{p}_{s:03d}" for p in range(patients) for s in range(slices)]
    for case in ids:
        labels = np.zeros((20, 24), np.uint8)
        labels[5:12, 6:15] = 1
        Image.fromarray(labels * 90 + 10).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(labels).save(root / "labelsTr" / f"{case}.png")
    val = [c for c in ids if c.startswith("pat3_")]
    folds = [{"train": [c for c in ids if c not in val], "val": val}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    return root, ids


def _patients(cases):
    return {c.case_id.split("_")[0] for c in cases}


def test_dataset_split_file_is_the_default(tmp_path):
    root, _ = _nnunet_slices(tmp_path / "ds")
    split = split_dataset(discover_nnunet_cases(root), SplitConfig(), root)
    assert _patients(split.val) == {"pat3"} and "pat3" not in _patients(split.train)
    assert split.describe()["source"] == "splits_final.json fold 0"
    assert split.describe()["val"] == {"cases": 5, "groups": 1}
    forced = split_dataset(discover_nnunet_cases(root), SplitConfig(source="fraction"), root)
    assert forced.source.startswith("seeded fraction")


def test_default_fraction_split_keeps_slices_of_a_patient_together(tmp_path):
    root, _ = _nnunet_slices(tmp_path / "ds", patients=6)
    (root / "splits_final.json").unlink()
    cases = discover_nnunet_cases(root)
    for seed in range(5):
        split = split_dataset(cases, SplitConfig(val_fraction=0.34, seed=seed), root)
        assert split.val and not _patients(split.train) & _patients(split.val)
        assert split.describe()["train"]["groups"] + split.describe()["val"]["groups"] == 6
    with pytest.warns(SplitLeakWarning, match="on both sides"):
        split_dataset(cases, SplitConfig(val_fraction=0.34, group_pattern="none"), root)


def test_a_leaking_dataset_split_file_is_warned_about(tmp_path):
    root, ids = _nnunet_slices(tmp_path / "ds")
    folds = [{"train": ids[::2], "val": ids[1::2]}]  # slices of every patient on both sides
    (root / "splits_final.json").write_text(json.dumps(folds))
    with pytest.warns(SplitLeakWarning, match="4 name groups"):
        split_dataset(discover_nnunet_cases(root), SplitConfig(), root)


def test_video_frames_are_grouped_by_sequence(tmp_path):
    names = [f"seq{s}_frame{f:03d}" for s in range(5) for f in range(4)]
    root = _write_pairs(tmp_path / "frames", names)
    cases = discover_folder_cases(root, "polyp")
    split = split_dataset(cases, SplitConfig(val_fraction=0.2, seed=1), root)
    sequences = [{c.case_id.split("_")[0] for c in side} for side in (split.train, split.val)]
    assert len(split.val) == 4 and len(sequences[1]) == 1 and not sequences[0] & sequences[1]
    assert split.grouping.startswith("auto: name ids, e.g. seq0_frame000 -> seq0 (5 groups)")


@pytest.mark.parametrize(
    ("case_id", "group"),
    [
        ("curvas_10001_458", "curvas_10001"),
        ("seq12_frame003", "seq12"),
        ("patient001-slice10", "patient001"),
        ("CHNCXR_0001_0", "CHNCXR_0001"),
        ("testA_25", "testA_25"),  # no id with a digit before the number: alone
        ("cju0qkwl35piu0993l0dewei2", "cju0qkwl35piu0993l0dewei2"),
    ],
)
def test_default_group_pattern(case_id, group):
    assert group_key(case_id, DEFAULT_GROUP_PATTERN) == group


def test_names_without_groups_and_volumes_stay_alone(tmp_path, make_nnunet_3d):
    root = _write_pairs(tmp_path / "glas", [f"testA_{i}" for i in range(6)])
    cases = discover_folder_cases(root, "gland")
    assert infer_groups(cases) is None
    split = split_dataset(cases, SplitConfig(val_fraction=0.34), root)
    assert split.grouping.startswith("auto: none found") and len(split.val) == 2
    # volumes named like slices (BraTS2021_00001, ...) are still one group each
    names = ["brats2021_00001", "brats2021_00002", "brats2021_00003"]
    fake = [Case(n, (root / "images" / "testA_0.png",), None, {}, "x") for n in names]
    assert infer_groups(fake, is_volume=lambda case: True) is None
    assert infer_groups(fake, is_volume=lambda case: False) is None  # one group: not a split


def _patients_of(split, key):
    return [{key(c.case_id) for c in side} for side in (split.train, split.val)]


def test_echo_views_and_mirrored_copies_stay_with_their_patient(tmp_path):
    """Echocardiography as published: 4 views per patient and a mirrored copy of each, the
    patient id inside the name (``mirrored_patient0001_2CH_ES``)."""
    names = [
        f"{mirror}patient{p:04d}_{view}_{phase}"
        for p in range(1, 7)
        for view in ("2CH", "4CH")
        for phase in ("ED", "ES")
        for mirror in ("", "mirrored_")
    ]
    root = _write_pairs(tmp_path / "echo", names)
    cases = discover_folder_cases(root, "ventricle")
    for seed in range(4):
        split = split_dataset(cases, SplitConfig(val_fraction=0.2, seed=seed), root)
        train, val = _patients_of(split, lambda i: i.removeprefix("mirrored_")[:11])
        assert len(val) == 1 and not train & val, (seed, val & train)
        grouping = "auto: name ids, e.g. mirrored_patient0001_2CH_ED -> patient0001 (6 groups)"
        assert split.grouping == grouping
        assert split.describe()["train"]["groups"] == 5


def _fake(names):
    return [Case(n, (Path(f"{n}.png"),), None, {}, "x") for n in names]


@pytest.mark.parametrize(
    ("names", "group"),
    [
        (["case_00012_axial", "case_00012_coronal", "case_00013_axial"], "case00012"),
        (["sub-01_T1w", "sub-01_FLAIR", "sub-02_T1w", "sub-02_FLAIR"], "sub01"),
        (["P12_left", "P12_right", "P7_left", "P7_right", "P3_left"], "p12"),
        (["scan_pat12_a", "scan_pat12_b", "scan_pat13_a", "scan_pat13_b"], "pat12"),
        # a leading or embedded id shared by several files (2CH: half of them, not an id)
        (["0001_2CH_ES", "0001_4CH_ED", "0002_2CH_ES", "0002_4CH_ED", "0003_2CH_ES"], "0001"),
        (["us_A12_left_v", "us_A12_right_v", "us_B07_left_v", "us_B07_right_v"], "A12"),
    ],
)
def test_patient_like_tokens_anywhere_in_a_name(names, group):
    groups = infer_groups(_fake(names), is_volume=lambda case: False)
    assert groups is not None and groups[names[0]] == groups[names[1]] == group
    assert groups[names[0]] != groups[names[2]]


def test_a_shared_digit_prefix_is_not_a_patient(tmp_path):
    """``X2017_001``, ``X2017_002``, ...: the prefix is the dataset's (a year, a challenge),
    not a patient: one name outside the pattern must not make it a split into two groups."""
    names = [f"X2017_{k:03d}" for k in range(1, 30)] + ["X2017_030_flipped"]
    assert infer_groups(_fake(names), is_volume=lambda case: False) is None
    root = _write_pairs(tmp_path / "x", names)
    with pytest.warns(SplitLeakWarning, match="EACH CASE IS ITS OWN GROUP"):
        split = split_dataset(discover_folder_cases(root, "lesion"), SplitConfig(), root)
    assert split.grouping.startswith("auto: none found") and len(split.val) == 6
    with_ids = [f"X2017_P{p}_{k:03d}" for p in range(5) for k in range(4)]  # ids still found
    assert set(infer_groups(_fake(with_ids), lambda case: False).values()) == {
        f"p{p}" for p in range(5)
    }


def _video_frames(shared_data, folder, videos=4, frames=12):
    """Consecutive frames of a few "videos" (a real colonoscopy image, the camera moving 2
    pixels a frame), numbered 1.png, 2.png, ... as in the published dataset."""
    sources = sorted((shared_data / "kvasir-seg" / "images").iterdir())[:videos]
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    number = 0
    for source in sources:
        scene = np.asarray(Image.open(source).convert("RGB"))
        for f in range(frames):
            number += 1
            frame = scene[2 * f : 2 * f + 200, 3 * f : 3 * f + 200]
            Image.fromarray(frame).save(folder / "images" / f"{number}.png")
            mask = np.zeros(frame.shape[:2], np.uint8)
            mask[60:140, 50 + f : 150 + f] = 255
            Image.fromarray(mask).save(folder / "masks" / f"{number}.png")
    return folder


def test_numbered_video_frames_warn_of_near_duplicates(shared_data, tmp_path):
    root = _video_frames(shared_data, tmp_path / "clinic")
    cases = discover_folder_cases(root, "polyp")
    assert infer_groups(cases) is None  # 1.png ... 48.png: nothing in the names
    with pytest.warns(SplitLeakWarning) as caught:
        split = split_dataset(cases, SplitConfig(val_fraction=0.2), root)
    texts = [str(w.message) for w in caught]
    assert any("EACH CASE IS ITS OWN GROUP" in t and "its 48 image names" in t for t in texts)
    near = [t for t in texts if "near-duplicate in training" in t]
    assert len(near) == 1 and f"10 of {len(split.val)} validation images" in near[0], texts
    assert "group_pattern" in near[0]


def test_distinct_images_get_no_near_duplicate_warning(shared_data, tmp_path):
    root = tmp_path / "glas"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for path in sorted((shared_data / "glas" / sub).iterdir()):
            (root / sub / path.name).symlink_to(path)
    cases = discover_folder_cases(root, "gland")
    with pytest.warns(SplitLeakWarning) as caught:
        split_dataset(cases, SplitConfig(val_fraction=0.3), root)
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "EACH CASE IS ITS OWN GROUP" in texts[0], texts


def test_a_mirrored_copy_is_a_near_duplicate(shared_data, tmp_path):
    images = sorted((shared_data / "kvasir-seg" / "images").iterdir())[:2]
    flipped = tmp_path / "mirrored.png"
    Image.fromarray(np.asarray(Image.open(images[0]))[:, ::-1]).save(flipped)
    original, other, mirrored = (Case(p.stem, (p,), None, {}, "k") for p in (*images, flipped))
    assert find_near_duplicates([mirrored, other], [original]) == [mirrored]
    assert find_near_duplicates([original], [other]) == []
