"""DICOM: single files (2D) and series folders (3D), via pydicom.

Values are the modality values: RescaleSlope/RescaleIntercept are applied (float32 then),
MONOCHROME1 is inverted so that larger always means brighter. Geometry follows the
(I, J, K) = (row, column, slice) layout: index i moves along the column direction cosine by
PixelSpacing[0], j along the row direction cosine by PixelSpacing[1], k from slice to
slice. DICOM's patient LPS coordinates are converted to RAS+ like NIfTI's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ssam.data.properties import ImageProperties, reading
from ssam.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFERRED_BYTES = 4096  # header reads leave values this long on disk (the pixel data)


def _orientation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(row direction cosine, column direction cosine), identity when absent."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    values = np.asarray([float(v) for v in iop])
    return values[:3], values[3:]


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm: PixelSpacing, else ImagerPixelSpacing, else 1."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None or len(spacing) != 2:
        return 1.0, 1.0
    return float(spacing[0]), float(spacing[1])


def _position(ds: Dataset) -> np.ndarray:
    ipp = ds.get("ImagePositionPatient")
    return np.zeros(3) if ipp is None else np.asarray([float(v) for v in ipp])


def _ras_affine(ds: Dataset, slice_vector: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(4, 4) voxel (row, column, slice) -> RAS+ mm."""
    row_cos, col_cos = _orientation(ds)
    row_spacing, col_spacing = _pixel_spacing(ds)
    lps = np.eye(4)
    lps[:3, 0] = col_cos * row_spacing
    lps[:3, 1] = row_cos * col_spacing
    lps[:3, 2] = slice_vector
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def _check_single_frame(ds: Dataset, path: Path) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM file holds no image (no Rows/Columns)")


def _read_header(path: Path, what: str) -> Dataset:
    """A DICOM file's header, checked: single frame, with an image and its pixel data.

    The pixel data is found but not loaded (``defer_size``: large values stay on disk), so
    a file without it fails here, with the other header checks, not when it is decoded.
    """
    with reading(path, what):
        ds = pydicom.dcmread(path, defer_size=_DEFERRED_BYTES)
    _check_single_frame(ds, path)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DataError(f"{path}: DICOM file holds no pixel data (no PixelData element)")
    return ds


def _modality_values(ds: Dataset, path: Path) -> np.ndarray:
    """Pixel data with RescaleSlope/Intercept applied: (H, W) or (H, W, 3)."""
    with reading(path, "DICOM pixel data"):
        pixels = ds.pixel_array
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:
        pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return pixels


def _invert_monochrome1(array: np.ndarray) -> np.ndarray:
    # (max - x) + min never leaves the dtype's range, unlike max + min - x.
    return (array.max() - array) + array.min()


def _single_slice_vector(ds: Dataset) -> np.ndarray:
    row_cos, col_cos = _orientation(ds)
    thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
    return np.cross(row_cos, col_cos) * thickness


def read_dicom_file(path: Path) -> tuple[np.ndarray, ImageProperties]:
    """One single-frame DICOM file -> ((C, H, W, 1), properties with PixelSpacing)."""
    with reading(path, "DICOM file"):
        ds = pydicom.dcmread(path)
    _check_single_frame(ds, path)
    pixels = _modality_values(ds, path)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = _invert_monochrome1(pixels)
    array = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    props = _file_properties(ds, path, array.shape[0], str(array.dtype))
    return np.ascontiguousarray(array)[..., None], props


def _file_properties(ds: Dataset, path: Path, n_channels: int, dtype: str = "") -> ImageProperties:
    slice_vector = _single_slice_vector(ds)
    row_spacing, col_spacing = _pixel_spacing(ds)
    return ImageProperties(
        path=path,
        shape=(int(ds.Rows), int(ds.Columns), 1),
        spacing=(row_spacing, col_spacing, float(np.linalg.norm(slice_vector))),
        affine=_ras_affine(ds, slice_vector, _position(ds)),
        kind="2d",
        n_channels=n_channels,
        dtype=dtype or _stored_dtype(ds),
    )


def _stored_dtype(ds: Dataset) -> str:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:
        return "float32"
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return f"{'int' if signed else 'uint'}{bits}"


def read_dicom_file_header(path: Path) -> ImageProperties:
    """Geometry of a single DICOM file without decoding its pixels (which must be there)."""
    ds = _read_header(path, "DICOM header")
    return _file_properties(ds, path, int(ds.get("SamplesPerPixel", 1) or 1))


def read_dicom_source_headers(path: Path) -> list[Dataset]:
    """The DICOM headers (no pixel data) behind an image read from ``path``, one per slice in
    the order of its K axis: the single file's, or a series' slices sorted as
    `read_dicom_series` sorts them (what a DICOM-SEG references, frame by frame)."""
    if path.is_dir():
        items, _ = _sort_series(_load_series(path, "sources"), path)
        return [ds for _, ds in items]
    with reading(path, "DICOM header"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    _check_single_frame(ds, path)
    return [ds]


def _series_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.name.upper() != "DICOMDIR"]
    if not files:
        raise DataError(f"{folder}: DICOM series folder holds no files")
    return files


def _load_series(folder: Path, read: str) -> list[tuple[Path, Dataset]]:
    """Every file of a series folder, read as ``read`` says: "pixels" (whole files),
    "header" (checked as ``_read_header``: pixel data present, not loaded) or "sources"
    (no pixel data at all: the headers a DICOM-SEG references)."""
    items = []
    for path in _series_files(folder):
        if read == "header":
            ds = _read_header(path, "DICOM file of a series")
        else:
            with reading(path, "DICOM file of a series"):
                ds = pydicom.dcmread(path, stop_before_pixels=read == "sources")
            _check_single_frame(ds, path)
        items.append((path, ds))
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in items}
    if len(uids) > 1:
        raise DataError(f"{folder}: holds {len(uids)} DICOM series ({sorted(uids)}); keep one")
    check_unique_instances([ds for _, ds in items], [path.name for path, _ in items], folder)
    return items


def check_unique_instances(headers: list[Dataset], names: list[str], where: Path) -> None:
    """DataError naming the UID when two slices share a SOPInstanceUID: each slice of a
    series is its own instance, and a DICOM-SEG frame referencing one could not be placed.
    Slices without the UID are left to the checks that need it."""
    seen: dict[str, str] = {}
    for ds, name in zip(headers, names, strict=True):
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and uid in seen:
            raise DataError(
                f"{where}: slices {seen[uid]} and {name} share SOPInstanceUID {uid}; "
                "every slice of a series needs its own"
            )
        seen.setdefault(uid, name)


def _sort_series(
    items: list[tuple[Path, Dataset]], folder: Path
) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """Sort slices along the slice normal; return them and the slice step vector (mm)."""
    first = items[0][1]
    row_cos, col_cos = _orientation(first)
    for path, ds in items:
        other = _orientation(ds)
        if not (
            np.allclose(other[0], row_cos, atol=1e-4) and np.allclose(other[1], col_cos, atol=1e-4)
        ):
            raise DataError(f"{path}: ImageOrientationPatient differs from the rest of {folder}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DataError(
                f"{path}: size {ds.Rows}x{ds.Columns} differs from the rest of {folder}"
            )
    normal = np.cross(row_cos, col_cos)
    depth = np.array([_position(ds) @ normal for _, ds in items])
    order = np.argsort(depth, kind="stable")
    items, depth = [items[i] for i in order], depth[order]
    if len(items) == 1:
        return items, _single_slice_vector(first)
    steps = np.diff(depth)
    if np.any(steps < 1e-6):
        raise DataError(f"{folder}: two slices share one ImagePositionPatient")
    if np.any(np.abs(steps - steps.mean()) > max(1e-3, 0.01 * steps.mean())):
        raise DataError(
            f"{folder}: non-uniform slice spacing (steps {steps.min():.3f}-{steps.max():.3f} mm); "
            "a slice is missing or two series are mixed"
        )
    return items, (_position(items[-1][1]) - _position(items[0][1])) / (len(items) - 1)


def _series_properties(
    items: list[tuple[Path, Dataset]], step: np.ndarray, folder: Path, dtype: str
) -> ImageProperties:
    first = items[0][1]
    row_spacing, col_spacing = _pixel_spacing(first)
    return ImageProperties(
        path=folder,
        shape=(int(first.Rows), int(first.Columns), len(items)),
        spacing=(row_spacing, col_spacing, float(np.linalg.norm(step))),
        affine=_ras_affine(first, step, _position(first)),
        kind="3d",
        n_channels=1,
        dtype=dtype,
    )


def read_dicom_series(folder: Path) -> tuple[np.ndarray, ImageProperties]:
    """A folder of single-frame DICOM slices -> ((1, rows, columns, slices), properties).

    Slices are sorted by ImagePositionPatient along the slice normal; each slice's own
    rescale is applied. Mixed series, differing orientation/size, duplicate positions and
    gaps (non-uniform spacing) are DataErrors naming the folder or file.
    """
    items, step = _sort_series(_load_series(folder, "pixels"), folder)
    slices = [_modality_values(ds, path) for path, ds in items]
    if any(s.ndim != 2 for s in slices):
        raise DataError(f"{folder}: colour DICOM series are not supported")
    kinds = {s.dtype for s in slices}
    volume = np.stack([s.astype(np.float32) for s in slices] if len(kinds) > 1 else slices, -1)
    if items[0][1].get("PhotometricInterpretation") == "MONOCHROME1":
        volume = _invert_monochrome1(volume)
    return volume[None], _series_properties(items, step, folder, str(volume.dtype))


def read_dicom_series_header(folder: Path) -> ImageProperties:
    """Geometry of a DICOM series folder, reading headers only."""
    items, step = _sort_series(_load_series(folder, "header"), folder)
    return _series_properties(items, step, folder, _stored_dtype(items[0][1]))
