"""NIfTI (.nii, .nii.gz) volumes via nibabel, kept in the file's own voxel order.

The array is the nibabel data array as stored, (I, J, K), with the file's affine; nothing
is reoriented. A 2D NIfTI becomes (I, J, 1); trailing singleton dimensions are dropped;
anything truly 4D (time series, channels in one file) is a DataError.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ssam.data.properties import ImageProperties, reading
from ssam.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DESCRIP_BYTES = 80


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) == 2:
        return int(shape[0]), int(shape[1]), 1
    if len(shape) >= 3 and all(int(s) == 1 for s in shape[3:]):
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise DataError(
        f"{path}: {len(shape)}D volume of shape {tuple(shape)} is not supported; "
        "store one 3D file per channel (CASE_0000, CASE_0001, ...)"
    )


def _load(path: Path) -> nib.Nifti1Image:
    with reading(path, "NIfTI file"):
        image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: not a NIfTI image ({type(image).__name__})")
    return image


def _properties(image: nib.Nifti1Image, path: Path, dtype: str) -> ImageProperties:
    shape = _spatial_shape(image.shape, path)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return ImageProperties(
        path=path,
        shape=shape,
        spacing=(zooms[0], zooms[1], zooms[2]),
        affine=np.asarray(image.affine, dtype=np.float64),
        kind="3d",
        n_channels=1,
        dtype=dtype,
        header=image.header.copy(),
    )


def read_nifti_header(path: Path) -> ImageProperties:
    """Shape, spacing and affine from the header only (the data stays compressed)."""
    image = _load(path)
    return _properties(image, path, str(image.get_data_dtype()))


def read_nifti(path: Path) -> tuple[np.ndarray, ImageProperties]:
    """Read a NIfTI volume -> ((1, I, J, K) array, properties).

    Values have the header's scl_slope/scl_inter applied (float then); float64 is reduced
    to float32.
    """
    image = _load(path)
    shape = _spatial_shape(image.shape, path)
    with reading(path, "NIfTI data"):
        data = np.asanyarray(image.dataobj)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    data = np.asarray(data).reshape(shape)
    return data[None], _properties(image, path, str(data.dtype))


def describe_label_names(names: Sequence[str]) -> bytes:
    """The header's ``descrip`` (80 bytes, ASCII) for a label map: ``labels 1=liver 2=kidney``,
    or ``N labels, names in the .labels.json beside it`` when they do not fit."""
    text = "labels " + " ".join(f"{k}={name}" for k, name in enumerate(names, 1))
    if len(text) > DESCRIP_BYTES:
        text = f"{len(names)} labels, names in the .labels.json beside it"
    return text.encode("ascii", "replace")[:DESCRIP_BYTES]


def _nifti_like(array: np.ndarray, properties: ImageProperties) -> nib.Nifti1Image:
    """``array`` (I, J, K) as a NIfTI image with the source's affine and header (its dtype,
    no scaling); a fresh NIfTI-1 header for DICOM and 2D sources, declaring the affine as
    scanner coordinates."""
    source = properties.header
    if isinstance(source, nib.Nifti2Header):
        image_type, header = nib.Nifti2Image, source.copy()
    elif isinstance(source, nib.Nifti1Header):
        image_type, header = nib.Nifti1Image, source.copy()
    else:
        image_type, header = nib.Nifti1Image, nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(None, None)
    image = image_type(array, properties.affine, header=header)
    if not isinstance(source, nib.Nifti1Header):
        image.set_qform(properties.affine, code=1)
        image.set_sform(properties.affine, code=1)
    return image


def write_nifti(
    labels: np.ndarray, properties: ImageProperties, path: Path, label_names: Sequence[str] = ()
) -> None:
    """Write an (I, J, K) integer label map with the source's affine and header.

    With ``label_names`` (value k is ``label_names[k - 1]``) the header says so where NIfTI-1
    has a place: intent NIFTI_INTENT_LABEL (code 1002, intent_name "label") and the names in
    ``descrip`` (80 bytes: a summary when they do not fit).
    """
    image = _nifti_like(labels, properties)
    header = image.header
    header["cal_min"], header["cal_max"] = 0, float(labels.max()) if labels.size else 0.0
    if label_names:
        header.set_intent("label", (), name="label")
        header["descrip"] = describe_label_names(label_names)
    nib.save(image, path)


def write_nifti_intensities(values: np.ndarray, properties: ImageProperties, path: Path) -> None:
    """Write an (I, J, K) intensity volume (stored values, e.g. HU) with the source's affine
    and header: what a viewer shows beneath a label map written by ``write_nifti``."""
    image = _nifti_like(values, properties)
    image.header.set_intent("none")
    image.header["cal_min"], image.header["cal_max"] = 0.0, 0.0  # viewers choose the window
    nib.save(image, path)
