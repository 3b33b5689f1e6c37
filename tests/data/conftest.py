"""Fixtures for the data-layer tests: the shared real data and writers of small real files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from predict_helpers import dicom_dataset

SHARED_DATA_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets in ../shared/data (read in place, never copied)."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA_DIR} is absent (expected ../shared/data)")
    return SHARED_DATA_DIR


@pytest.fixture()
def write_dicom() -> Callable[..., Path]:
    """write_dicom(path, pixels (H, W) uint16/int16, **tags) -> path of a real DICOM file."""

    def write(path: Path, pixels: np.ndarray, **tags: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        dicom_dataset(pixels, **tags).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
        return path

    return write


@pytest.fixture()
def write_nifti() -> Callable[..., Path]:
    """write_nifti(path, array, affine=None) -> path of a real NIfTI file."""

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
        return path

    return write


def _blob_mask(size: tuple[int, int], seed: int) -> np.ndarray:
    """A (H, W) bool ellipse at a seeded place: a plausible binary mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / (0.25 * h)) ** 2 + ((x - cx) / (0.2 * w)) ** 2 < 1


@pytest.fixture()
def make_folder_dataset() -> Callable[..., Path]:
    """make_folder_dataset(root, n=4, size=(40, 48)) -> root with images/*.png + masks/*.png."""

    def make(root: Path, n: int = 4, size: tuple[int, int] = (40, 48)) -> Path:
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for i in range(n):
            mask = _blob_mask(size, i)
            image = np.stack([mask * 200 + 30, np.full(size, 90), np.full(size, 60)], -1)
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"img{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i}.png")
        return root

    return make


LABELS = {"background": 0, "liver": 1, "kidney": 2}


@pytest.fixture()
def make_nnunet_2d() -> Callable[..., Path]:
    """make_nnunet_2d(root, n=4) -> nnU-Net v2 2D PNG dataset with labels liver=1 kidney=2."""

    def make(root: Path, n: int = 4, size: tuple[int, int] = (32, 40)) -> Path:
        for folder in ("imagesTr", "labelsTr"):
            (root / folder).mkdir(parents=True)
        channels = {"0": "CT"}
        (root / "dataset.json").write_text(
            json.dumps({"channel_names": channels, "labels": LABELS, "file_ending": ".png"})
        )
        for i in range(n):
            labels = _blob_mask(size, i).astype(np.uint8)
            labels[: size[0] // 4, : size[1] // 4] = 2 if i % 2 == 0 else 0
            image = (labels * 80 + 20).astype(np.uint8)
            Image.fromarray(image).save(root / "imagesTr" / f"case{i}_0000.png")
            Image.fromarray(labels).save(root / "labelsTr" / f"case{i}.png")
        return root

    return make


@pytest.fixture()
def make_nnunet_3d(write_nifti) -> Callable[..., Path]:
    """make_nnunet_3d(root, n=2) -> nnU-Net v2 3D NIfTI dataset, channels FLAIR and T1, lesion=1."""

    def make(root: Path, n: int = 2, shape: tuple[int, int, int] = (12, 14, 10)) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset.json").write_text(
            json.dumps(
                {
                    "channel_names": {"0": "FLAIR", "1": "T1"},
                    "labels": {"background": 0, "lesion": 1},
                    "file_ending": ".nii.gz",
                }
            )
        )
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        for i in range(n):
            labels = np.zeros(shape, dtype=np.uint8)
            labels[3:8, 4:9, 2 + i : 5 + i] = 1
            for channel in range(2):
                image = (labels * 100.0 + 10.0 * (channel + 1)).astype(np.float32)
                write_nifti(root / "imagesTr" / f"pt{i}_{channel:04d}.nii.gz", image, affine)
            write_nifti(root / "labelsTr" / f"pt{i}.nii.gz", labels, affine)
        return root

    return make
