"""Case discovery and validation: the shared datasets and small broken copies of real layouts."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from ssam.config.data import DatasetConfig
from ssam.data.cases import BadCaseWarning, read_case_image, read_case_labels, validate_cases
from ssam.data.layouts import discover_folder_cases, discover_nnunet_cases, load_cases
from ssam.errors import DataError


def test_real_folder_layout(shared_data_dir):
    cases = discover_folder_cases(shared_data_dir / "shenzhen-cxr", "lung")
    assert len(cases) == 300
    case = cases[0]
    assert case.case_id == "CHNCXR_0001_0" and case.labels == {"lung": 1} and case.binary
    assert case.image_paths[0].suffix == ".jpg" and case.label_path.suffix == ".png"
    assert validate_cases(cases[:4]) == cases[:4]
    labels, _ = read_case_labels(case)
    assert set(np.unique(labels)) == {0, 1}


def test_real_nnunet_2d_layout(shared_data_dir):
    cases = discover_nnunet_cases(shared_data_dir / "curvas-ct")
    assert len(cases) == 36
    assert cases[0].labels == {"liver": 1, "kidney": 2, "pancreas": 3}
    assert cases[0].image_paths[0].name == f"{cases[0].case_id}_0000.png"
    start = time.perf_counter()
    assert len(validate_cases(cases)) == 36
    assert time.perf_counter() - start < 5.0
    only_liver = discover_nnunet_cases(shared_data_dir / "curvas-ct", labels=["liver"])
    assert only_liver[0].labels == {"liver": 1}
    with pytest.raises(DataError, match=r"unknown label.*'spleen'"):
        discover_nnunet_cases(shared_data_dir / "curvas-ct", labels=["spleen"])
    assert discover_nnunet_cases(shared_data_dir / "curvas-ct", subset="test") == []


def test_real_nnunet_3d_layout_channels(shared_data_dir):
    root = shared_data_dir / "ms-lesions-mri"
    both = discover_nnunet_cases(root)
    assert [c.case_id for c in both] == ["patient07", "patient19"]
    assert [p.name for p in both[0].image_paths] == [
        "patient07_0000.nii.gz",
        "patient07_0001.nii.gz",
    ]
    t1 = discover_nnunet_cases(root, channels=["t1"])
    assert [p.name for p in t1[0].image_paths] == ["patient07_0001.nii.gz"]
    assert discover_nnunet_cases(root, channels=[1, 0])[0].image_paths == both[0].image_paths[::-1]
    with pytest.raises(DataError, match=r"dataset\.json.*unknown channel 'T2'"):
        discover_nnunet_cases(root, channels=["T2"])
    start = time.perf_counter()
    validate_cases(both, check_values=False)  # headers only
    assert time.perf_counter() - start < 2.0
    assert len(validate_cases(both)) == 2  # label values too
    image, props = read_case_image(both[0])
    assert image.shape == (2, 182, 218, 182) and props.spacing == (1.0, 1.0, 1.0)


def test_image_without_mask_and_mask_without_image(tmp_path, make_folder_dataset):
    root = make_folder_dataset(tmp_path / "ds", n=3)
    (root / "masks" / "img1.png").unlink()
    shutil.copy(root / "masks" / "img2.png", root / "masks" / "orphan.png")
    with pytest.raises(DataError, match=r"orphan\.png: mask without image"):
        discover_folder_cases(root, "polyp")
    (root / "masks" / "orphan.png").unlink()
    with pytest.raises(DataError, match=r"img1\.png: image without mask"):
        discover_folder_cases(root, "polyp")
    with pytest.warns(BadCaseWarning, match=r"img1\.png: image without mask"):
        cases = discover_folder_cases(root, "polyp", skip_bad=True)
    assert [c.case_id for c in cases] == ["img0", "img2"]


def test_mask_of_another_size(tmp_path, make_folder_dataset):
    root = make_folder_dataset(tmp_path / "ds", n=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img1.png")
    cases = discover_folder_cases(root, "polyp")
    with pytest.raises(DataError, match=r"img1\.png: mask size \(10, 10\) differs from image"):
        validate_cases(cases)
    with pytest.warns(BadCaseWarning, match="img1"):
        assert [c.case_id for c in validate_cases(cases, skip_bad=True)] == ["img0"]


def test_folder_mask_that_is_a_label_map(tmp_path, make_folder_dataset):
    root = make_folder_dataset(tmp_path / "ds", n=1)
    Image.fromarray(np.arange(40 * 48).reshape(40, 48).astype(np.uint8) % 3).save(
        root / "masks" / "img0.png"
    )
    with pytest.raises(DataError, match=r"img0\.png: mask holds 3 values.*nnunet"):
        validate_cases(discover_folder_cases(root, "polyp"))


def test_corrupt_image_and_empty_dataset(tmp_path, make_folder_dataset):
    root = make_folder_dataset(tmp_path / "ds", n=2)
    (root / "images" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cases = discover_folder_cases(root, "polyp")
    with pytest.raises(DataError, match=r"img0\.png: cannot read"):
        validate_cases(cases)
    with pytest.warns(BadCaseWarning):
        assert len(validate_cases(cases, skip_bad=True)) == 1
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        discover_folder_cases(empty, "polyp")
    with pytest.raises(DataError, match="empty dataset"):
        validate_cases([])


def test_label_value_not_in_dataset_json(tmp_path, make_nnunet_2d):
    root = make_nnunet_2d(tmp_path / "ds", n=2)
    labels = np.asarray(Image.open(root / "labelsTr" / "case1.png")).copy()
    labels[0, 0] = 7
    Image.fromarray(labels).save(root / "labelsTr" / "case1.png")
    cases = discover_nnunet_cases(root)
    assert cases[0].declared_values == {0, 1, 2}
    with pytest.raises(DataError, match=r"case1\.png: label value\(s\) \[7\] not declared"):
        validate_cases(cases)


def test_nnunet_missing_files_and_test_subset(tmp_path, make_nnunet_3d):
    root = make_nnunet_3d(tmp_path / "ds", n=3)
    (root / "imagesTr" / "pt1_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"pt1_0001\.nii\.gz: channel file missing"):
        discover_nnunet_cases(root)
    assert len(discover_nnunet_cases(root, channels=["FLAIR"])) == 3
    (root / "imagesTr" / "pt2_0000.nii.gz").rename(tmp_path / "moved.nii.gz")
    (root / "imagesTr" / "pt2_0001.nii.gz").unlink()
    with pytest.warns(BadCaseWarning, match=r"pt2\.nii\.gz: label map without image"):
        kept = discover_nnunet_cases(root, channels=["FLAIR"], skip_bad=True)
    assert [c.case_id for c in kept] == ["pt0", "pt1"]
    with pytest.raises(DataError, match=r"pt2\.nii\.gz: label map without image"):
        discover_nnunet_cases(root, channels=["FLAIR"])
    (root / "imagesTs").mkdir()
    shutil.copy(tmp_path / "moved.nii.gz", root / "imagesTs" / "new_0000.nii.gz")
    tests = discover_nnunet_cases(root, channels=[0], subset="test")
    assert [(c.case_id, c.label_path) for c in tests] == [("new", None)]
    assert validate_cases(tests) == tests


def test_nnunet_volume_shape_mismatch_from_headers(tmp_path, make_nnunet_3d, write_nifti):
    root = make_nnunet_3d(tmp_path / "ds", n=1)
    write_nifti(
        root / "labelsTr" / "pt0.nii.gz", np.zeros((12, 14, 9), np.uint8), np.diag([1.5, 1.5, 3, 1])
    )
    with pytest.raises(DataError, match=r"pt0\.nii\.gz: mask shape \(12, 14, 9\) differs"):
        validate_cases(discover_nnunet_cases(root), check_values=False)


def test_dataset_json_errors(tmp_path, make_nnunet_2d):
    with pytest.raises(DataError, match=r"dataset\.json not found"):
        discover_nnunet_cases(tmp_path)
    root = make_nnunet_2d(tmp_path / "ds", n=1)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {}}))
    with pytest.raises(DataError, match=r"dataset\.json: 'labels'"):
        discover_nnunet_cases(root)


def test_load_cases_from_config(tmp_path, make_folder_dataset, make_nnunet_2d):
    folder = make_folder_dataset(tmp_path / "polyps", n=2)
    cases = load_cases(DatasetConfig(path=folder, layout="folder", label="polyp"))
    assert [c.dataset for c in cases] == ["polyps", "polyps"]
    nnunet = make_nnunet_2d(tmp_path / "ct", n=2)
    cases = load_cases(DatasetConfig(path=nnunet, layout="nnunet", name="CT", labels=["kidney"]))
    assert cases[0].labels == {"kidney": 2} and cases[0].dataset == "CT"
