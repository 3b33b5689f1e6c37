"""Read images, volumes and label maps; write label maps back with the input's geometry.

Conventions (nnU-Net style: a reader returns the array and its properties, the writer
takes the properties back):

- Spatial axes are (I, J, K), the voxel axes of ``properties.affine``; NIfTI arrays keep
  their stored order (nothing is reoriented), DICOM series are (row, column, slice).
- 2D is a volume of depth one: a 2D image is (H, W, 1), row = I, column = J.
- Images are channels-first, (C, I, J, K) with C = 1 (grey) or 3 (RGB), in the stored
  dtype (uint8, uint16 for 16-bit files, float32 after a DICOM rescale or NIfTI scaling).
  Intensity scaling to 0-255 happens later (`ssam.data.transforms`), never here.
- Label maps are (I, J, K) of the smallest non-negative integer dtype that fits.
- Slices: `take_slice(volume, axis, index)`; the default axis is -1 (K, the NIfTI
  array's last axis: axial for RAS-like volumes; the depth axis of 2D images).

Supported: .png .jpg .jpeg .bmp .tif .tiff (2D), .dcm .dicom (single 2D DICOM file),
.nii .nii.gz (volume), a folder of DICOM files (one series). Anything else, a corrupt file,
a 4D volume or a varying alpha channel is a DataError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ssam.atomic import atomic_path
from ssam.data._dicom import (
    DICOM_SUFFIXES,
    check_unique_instances,
    read_dicom_file,
    read_dicom_file_header,
    read_dicom_series,
    read_dicom_series_header,
    read_dicom_source_headers,
)
from ssam.data._nifti import (
    NIFTI_SUFFIXES,
    read_nifti,
    read_nifti_header,
    write_nifti,
    write_nifti_intensities,
)
from ssam.data._raster import (
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    read_raster,
    read_raster_header,
    write_raster,
)
from ssam.data.properties import ImageProperties, take_slice, to_label_map
from ssam.errors import DataError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageProperties",
    "binarize_mask",
    "check_unique_instances",
    "file_suffix",
    "label_map_suffix",
    "read_header",
    "read_image",
    "read_dicom_source_headers",
    "read_mask",
    "take_slice",
    "write_label_map",
    "write_volume",
]

MAX_VALUES_ENV = "SSAM_MAX_VOXELS"
DEFAULT_MAX_VALUES = 2**30
SUPPORTED_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


def file_suffix(path: Path | str) -> str:
    """Lower-case extension, with ".nii.gz" as one suffix; "" for none."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "dicom_series"
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = file_suffix(path)
    if suffix in PIL_SUFFIXES or suffix in TIFF_SUFFIXES:
        return "raster"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    raise DataError(
        f"{path}: unsupported file type '{suffix or path.name}' "
        f"(supported: {', '.join(SUPPORTED_SUFFIXES)} or a DICOM series folder)"
    )


def read_image(path: Path | str) -> tuple[np.ndarray, ImageProperties]:
    """Read an image or volume.

    Returns:
        image: (C, I, J, K), stored dtype (see module docstring); 2D files are (C, H, W, 1).
        properties: spacing (mm), affine (4x4), shape (I, J, K), source path, ...
    """
    path = Path(path)
    kind = _format_of(path)
    check_image_size(read_header(path))  # sizes from the header, before allocating anything
    if kind == "raster":
        return read_raster(path)
    if kind == "dicom":
        return read_dicom_file(path)
    if kind == "nifti":
        return read_nifti(path)
    return read_dicom_series(path)


def max_image_values() -> int:
    """The most values (voxels x channels) one image may hold: ``SSAM_MAX_VOXELS``, else 2**30
    (a 1024 x 1024 x 1024 volume; 4 GiB as float32)."""
    raw = os.environ.get(MAX_VALUES_ENV, "")
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_VALUES
    except (ValueError, OverflowError):
        raise DataError(f"{MAX_VALUES_ENV}={raw!r} is not a number") from None


def check_image_size(properties: ImageProperties) -> None:
    """A DataError naming the file when its header declares more values than allowed (a
    decompression bomb, or a file too large for this machine)."""
    values = int(np.prod(properties.shape, dtype=np.int64)) * max(properties.n_channels, 1)
    limit = max_image_values()
    if values > limit:
        shape = " x ".join(str(s) for s in properties.shape)
        raise DataError(
            f"{properties.path}: the header declares {shape} x {properties.n_channels} channel(s) "
            f"= {values:,} values, over the limit of {limit:,}; set {MAX_VALUES_ENV} to raise it"
        )


def read_header(path: Path | str) -> ImageProperties:
    """Properties without decoding pixel data where the format allows (all supported ones).

    NIfTI shape and affine come from the header; .nii.gz data stays compressed.
    """
    path = Path(path)
    kind = _format_of(path)
    if kind == "raster":
        return read_raster_header(path)
    if kind == "dicom":
        return read_dicom_file_header(path)
    if kind == "nifti":
        return read_nifti_header(path)
    return read_dicom_series_header(path)


def read_mask(path: Path | str) -> tuple[np.ndarray, ImageProperties]:
    """Read a label map (binary mask or integer labels).

    Palette PNGs give their palette indices. A colour mask is accepted only if its
    channels are equal (grey stored as RGB). Values must be non-negative integers.

    Returns:
        labels: (I, J, K) uint8/uint16/int32, raw values (a 0/255 mask stays 0/255; see
            `binarize_mask`); 2D masks are (H, W, 1).
        properties: as `read_image`, with n_channels = 1.
    """
    path = Path(path)
    kind = _format_of(path)
    if kind == "raster":
        check_image_size(read_header(path))
    image, props = read_raster(path, as_mask=True) if kind == "raster" else read_image(path)
    if any(not np.array_equal(image[0], image[c]) for c in range(1, image.shape[0])):
        raise DataError(
            f"{path}: colour mask (channels differ); convert it to a grey label map "
            "where each pixel holds its label value"
        )
    labels = to_label_map(image[0], path)
    return labels, replace(props, n_channels=1, dtype=str(labels.dtype))


def binarize_mask(labels: np.ndarray) -> np.ndarray:
    """Binary mask of a 0/255, 0/1 (or JPEG-noisy) mask: uint8 {0, 1}, same shape.

    Foreground is value > max / 2, so {0, 1} and {0, 255} both work and JPEG ringing
    around 0 and 255 is ignored. An all-zero mask stays all zero.
    """
    peak = labels.max() if labels.size else 0
    if peak == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    return (labels.astype(np.float64) * 2 > float(peak)).astype(np.uint8)


def label_map_suffix(properties: ImageProperties) -> str:
    """Natural extension for a label map of this source: ".png" for 2D rasters, else
    ".nii.gz" (volumes, NIfTI, and DICOM files, whose geometry a PNG would lose)."""
    dicom = file_suffix(properties.path) in DICOM_SUFFIXES
    return ".png" if properties.kind == "2d" and not dicom else ".nii.gz"


def write_label_map(
    labels: np.ndarray,
    properties: ImageProperties,
    path: Path | str,
    label_names: Sequence[str] = (),
) -> Path:
    """Write a label map with the geometry of the image it was predicted from, atomically
    (a temporary file renamed onto ``path`` once complete).

    Args:
        labels: (I, J, K) integer (or bool) label map of shape ``properties.shape``; for
            2D sources (H, W) is accepted as well.
        properties: from `read_image` / `read_mask` of the source image.
        path: .png / .tif(f) (2D only, 8-bit or 16-bit) or .nii / .nii.gz (any; the
            source's affine, and its NIfTI header if it had one).
        label_names: the name of each value 1..L; NIfTI files then carry them in the header
            (intent "label", ``descrip``); PNG and TIFF have no place for them.

    Returns:
        The path written.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim == 2 and properties.is_2d:
        labels = labels[..., None]
    if tuple(labels.shape) != tuple(properties.shape):
        raise DataError(
            f"{path}: label map shape {tuple(labels.shape)} differs from the source "
            f"{properties.path} shape {properties.shape}"
        )
    labels = to_label_map(labels, path)
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        with atomic_path(path, suffix) as tmp:
            write_nifti(labels, properties, tmp, label_names)
        return path
    if not properties.is_2d:
        raise DataError(f"{path}: a volume of shape {properties.shape} needs .nii or .nii.gz")
    if labels.dtype == np.int32:
        raise DataError(f"{path}: label values above 65535 do not fit a PNG or TIFF")
    if suffix not in (".png", *TIFF_SUFFIXES):
        raise DataError(f"{path}: label maps are written as .png, .tif(f), .nii or .nii.gz")
    with atomic_path(path, suffix) as tmp:
        write_raster(labels[..., 0], tmp)
    return path


def write_volume(values: np.ndarray, properties: ImageProperties, path: Path | str) -> Path:
    """Write an (I, J, K) intensity volume (its stored values) as .nii/.nii.gz with the
    geometry of ``properties``, so it lies under a label map ``write_label_map`` wrote."""
    path = Path(path)
    values = np.asarray(values)
    if tuple(values.shape) != tuple(properties.shape):
        raise DataError(
            f"{path}: volume shape {tuple(values.shape)} differs from the source "
            f"{properties.path} shape {properties.shape}"
        )
    if file_suffix(path) not in NIFTI_SUFFIXES:
        raise DataError(f"{path}: an intensity volume is written as .nii or .nii.gz")
    with atomic_path(path, file_suffix(path)) as tmp:
        write_nifti_intensities(values, properties, tmp)
    return path
