"""Helpers shared by the prediction, merge and export tests: a trained tiny adapter, small
real input files (PNG, JPEG, DICOM via pydicom, a cropped real NIfTI volume). The data tests
build their DICOM files with ``dicom_dataset`` too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ssam.config.model import ModelConfig
from ssam.factory import create_model
from ssam.tuning.adapter import save_adapter

LABELS = ("liver", "kidney")
TINY_SIZE = 64


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny model's ops are too small to share, and on a busy
    two-core machine extra OpenMP threads only wait for each other (5x slower tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_model_config(checkpoint: Path, image_size: int = TINY_SIZE, variant: str = "tiny"):
    return ModelConfig(
        variant=variant,
        image_size=image_size,
        sam_checkpoint=checkpoint,
        text_encoder="tiny",
        allow_download=False,
        svd_cache=False,
    )


def lite_model_config(image_size: int = TINY_SIZE) -> ModelConfig:
    """LiteMedSAM (the default base, real weights from its package) at a small input size,
    with the seeded random CLIP text tower (no CLIP weights offline)."""
    return ModelConfig(image_size=image_size, random_text_tower=True, allow_download=False)


def train_adapter(
    checkpoint: Path | None,
    folder: Path,
    labels: Sequence[str] = LABELS,
    steps: int = 2,
    config: ModelConfig | None = None,
) -> Path:
    """A model trained a few AdamW steps (so the adapter is not the identity), saved: the
    tiny SAM of ``checkpoint``, or the model ``config`` describes.

    Runs with ``SSAM_CACHE`` inside ``folder``: module-scoped fixtures run before the
    per-test cache is set up.
    """
    config = config or tiny_model_config(checkpoint)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSAM_CACHE", str(folder / "cache"))
        torch.manual_seed(0)
        model = create_model(config)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=1e-2)
        size = config.image_size
        for _ in range(steps):
            images = torch.randn(2, 3, size, size)
            loss = (model(images, [labels[0], labels[-1]]) - 1).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return save_adapter(model, folder / "adapter.safetensors", labels=list(labels))


def dicom_dataset(
    pixels: np.ndarray,
    *,
    slope: float | None = None,
    intercept: float | None = None,
    spacing: tuple[float, float] = (0.7, 0.8),
    thickness: float = 2.5,
    position: Sequence[float] = (-100.0, -120.0, 10.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_uid: str = "1.2.3.4",
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A single-frame 16-bit CT DICOM dataset of ``pixels`` (H, W), rescaled when ``slope``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = series_uid, "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.SliceThickness = thickness
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_dicom(
    path: Path, pixels: np.ndarray, spacing: tuple[float, float] = (0.7, 0.8), **tags
) -> Path:
    """A single-frame 16-bit CT DICOM file written by pydicom."""
    tags = {"thickness": 2.0, "position": (-50.0, -60.0, 10.0), **tags}
    dicom_dataset(pixels, spacing=spacing, **tags).save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def crop_mri(shared_data: Path, path: Path, first: int = 88, count: int = 3) -> Path:
    """A few axial slices of a real MS-lesion FLAIR volume, written with its affine."""
    source = nib.load(shared_data / "ms-lesions-mri" / "imagesTr" / "patient07_0000.nii.gz")
    data = np.asanyarray(source.dataobj)[:, :, first : first + count]
    affine = source.affine.copy()
    affine[:3, 3] = source.affine[:3, :3] @ [0, 0, first] + source.affine[:3, 3]
    nib.save(nib.Nifti1Image(data, affine, source.header), path)
    return path


def kvasir_image(shared_data: Path) -> Path:
    return sorted((shared_data / "kvasir-seg" / "images").glob("*.jpg"))[0]


def predict_on_backend(
    image: Path, adapter: Path, checkpoint: Path, out: Path, backend: str
) -> tuple[np.ndarray, str]:
    """``ssam predict IMAGE --backend BACKEND`` in a real process on one thread, offline: the
    label map it wrote and its stderr (the run must succeed)."""
    from ssam.data.io import read_image

    args = ["predict", str(image), "-o", str(out), "--adapter", str(adapter)]
    args += ["--sam-checkpoint", str(checkpoint), "--backend", backend]
    done = subprocess.run(
        [sys.executable, "-m", "ssam", *args, "--threads", "1", "--no-progress", "--offline"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return read_image(out / f"{image.stem}.png")[0], done.stderr
