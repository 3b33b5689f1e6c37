"""Inputs that were accepted silently or crashed: mixed DICOM series folders, labels no mask
contains, all-NaN or constant volumes, partial NaNs, and headers declaring huge images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from predict_helpers import write_dicom
from ssam.config.data import DatasetConfig
from ssam.data.io import read_image
from ssam.data.layouts import load_cases
from ssam.errors import DataError


def _nifti(path, array):
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def _bomb_nifti(path):
    """A real .nii file (nibabel) whose header is then edited to declare 4000^3 voxels."""
    _nifti(path, np.zeros((2, 2, 2), np.int16))
    raw = bytearray(path.read_bytes())
    raw[42:48] = np.array([4000, 4000, 4000], "<i2").tobytes()  # dim[1..3] of the header
    path.write_bytes(bytes(raw))
    return path


def _series(folder, uid, n, offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(uid))
    for i in range(n):
        pixels = rng.integers(0, 400, (24, 24)).astype(np.uint16)
        write_dicom(folder / f"IM{offset + i:03d}.dcm", pixels, series_uid=uid,
                    position=(-50.0, -60.0, 10.0 + 2 * i))  # fmt: skip


def test_header_bombs_fail_before_allocating(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"4000 x 4000 x 4000 .* over the limit .*SSAM_MAX_VOXELS"):
        read_image(_bomb_nifti(tmp_path / "bomb.nii"))
    tiff = tmp_path / "big.tif"
    tifffile.imwrite(tiff, np.zeros((200, 200), np.uint16))
    read_image(tiff)  # under the default limit
    monkeypatch.setenv("SSAM_MAX_VOXELS", "10000")
    with pytest.raises(DataError, match=r"big.tif: the header declares 200 x 200"):
        read_image(tiff)
    dicom = write_dicom(tmp_path / "big.dcm", np.zeros((120, 120), np.uint16))
    with pytest.raises(DataError, match=r"big.dcm: the header declares 120 x 120"):
        read_image(dicom)  # DICOM files and series are held to the limit too
    series = tmp_path / "series"
    _series(series, "1.2.3.4", 3)
    monkeypatch.setenv("SSAM_MAX_VOXELS", "1000")
    with pytest.raises(DataError, match=r"series: the header declares 24 x 24 x 3"):
        read_image(series)
    monkeypatch.setenv("SSAM_MAX_VOXELS", "inf")
    with pytest.raises(DataError, match=r"SSAM_MAX_VOXELS='inf' is not a number"):
        read_image(tiff)


def test_predict_names_every_bad_input(adapter, tiny_checkpoint, tmp_path):
    """One real ``ssam predict`` over a folder of bad inputs: each is a failed case or a
    warning naming the file; nothing is skipped without a word and nothing crashes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    nan = np.full((20, 20, 3), np.nan, np.float32)
    _nifti(inputs / "all_nan.nii.gz", nan)
    _nifti(inputs / "constant.nii.gz", np.full((20, 20, 3), 7.0, np.float32))
    partial = np.random.default_rng(0).normal(100, 20, (20, 20, 3)).astype(np.float32)
    partial[:2] = np.nan
    _nifti(inputs / "some_nan.nii.gz", partial)
    _bomb_nifti(inputs / "bomb.nii")
    _series(inputs / "mixed", "1.2.3.100", 2)
    _series(inputs / "mixed", "1.2.3.200", 2, offset=10)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "predict", str(inputs), "-o", str(out), "--adapter",
         str(adapter), "--sam-checkpoint", str(tiny_checkpoint), "--offline", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert "FAILED all_nan" in text and "every value is NaN" in text
    assert "FAILED constant" in text and "every value is 7.0" in text
    assert "FAILED bomb" in text and "over the limit" in text
    assert "FAILED mixed" in text and "1.2.3.100" in text and "1.2.3.200" in text
    report = json.loads((out / "some_nan.json").read_text())
    assert any("120 of 1,200 values are NaN" in w for w in report["warnings"])


def _nnunet_with_absent_label(root):
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    labels = {"background": 0, "liver": 1, "tumour": 2}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".png"})
    )
    for i in range(3):
        mask = np.zeros((20, 20), np.uint8)
        mask[4 + i : 12, 5:15] = 1  # liver only: no case holds a tumour
        Image.fromarray(mask * 80 + 20).save(root / "imagesTr" / f"case{i}_0000.png")
        Image.fromarray(mask).save(root / "labelsTr" / f"case{i}.png")
    return root


def test_a_label_no_mask_contains_is_an_error(tmp_path):
    root = _nnunet_with_absent_label(tmp_path / "ds")
    with pytest.raises(
        DataError, match=r"label\(s\) \['tumour'\] \(values \[2\]\) appear in no mask"
    ):
        load_cases(DatasetConfig(path=root, layout="nnunet"))
    with pytest.warns(UserWarning, match="tumour"):
        cases = load_cases(DatasetConfig(path=root, layout="nnunet", skip_bad=True))
    assert all(list(c.labels) == ["liver"] for c in cases)
    only_liver = load_cases(DatasetConfig(path=root, layout="nnunet", labels=["liver"]))
    assert len(only_liver) == 3


def test_a_blank_training_image_fails_validation_not_an_epoch(tmp_path):
    """A constant 2D image or an all-NaN volume is refused when the dataset is checked (naming
    the file), before training starts; skip_bad drops it like any other bad case."""
    root = tmp_path / "polyps"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "blank"):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        if name == "blank":
            pixels[:] = 0
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    config = DatasetConfig(path=root, layout="folder", label="polyp")
    with pytest.raises(DataError, match=r"blank\.png: every value is 0"):
        load_cases(config)
    with pytest.warns(UserWarning, match="blank"):
        kept = load_cases(config.model_copy(update={"skip_bad": True}))
    assert sorted(c.case_id for c in kept) == ["a", "b"]
