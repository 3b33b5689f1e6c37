"""Geometry that travels with every array read from disk, and the helpers around it.

Array layout (the one convention of `ssam.data`): spatial axes are (I, J, K), the voxel
axes of the affine. A 2D image is a volume of depth one: (H, W, 1), with I = row and
J = column. Images carry a leading channel axis, (C, I, J, K); label maps have none,
(I, J, K). `take_slice` cuts along one spatial axis and keeps the others in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from ssam.errors import DataError

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True, eq=False)
class ImageProperties:
    """What a reader learnt about a file and a writer needs to give a label map back.

    Attributes:
        path: the file (or DICOM series folder) read.
        shape: spatial shape (I, J, K); 2D images are (H, W, 1).
        spacing: voxel size in mm along (I, J, K); 1.0 for 2D formats without spacing
            (distances are then in pixels).
        affine: (4, 4) float64, voxel index (i, j, k, 1) -> world mm. NIfTI: the file's
            affine (RAS+). DICOM: patient LPS converted to RAS+. Other 2D: diag(spacing, 1).
        kind: "2d" for raster formats and single DICOM files, "3d" for NIfTI and series.
        n_channels: channels of the image (1 grey, 3 RGB); 1 for label maps.
        dtype: dtype of the stored values (after DICOM rescale).
        header: the NIfTI header for NIfTI sources (kept so label maps keep it), else None.
    """

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    kind: Literal["2d", "3d"]
    n_channels: int = 1
    dtype: str = "uint8"
    header: Any = field(default=None, repr=False)

    @property
    def is_2d(self) -> bool:
        """True for a depth-one image, sliced along axis 2."""
        return self.shape[2] == 1


def pixel_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """(4, 4) float64 affine of an axis-aligned grid: diag(spacing..., 1)."""
    return np.diag([*map(float, spacing), 1.0])


def normalize_axis(axis: int) -> int:
    """Spatial axis in -3..2 -> 0..2; ValueError otherwise."""
    if not -3 <= axis <= 2:
        raise ValueError(f"spatial axis must be in -3..2, got {axis}")
    return axis % 3


def take_slice(volume: ArrayT, axis: int, index: int) -> ArrayT:
    """One 2D slice of a (..., I, J, K) array (numpy or torch), as a view.

    Args:
        volume: (..., I, J, K): an image (C, I, J, K) or a label map (I, J, K).
        axis: spatial axis in -3..2 (-1 = K, the NIfTI array's last axis).
        index: slice index along that axis.

    Returns:
        (..., A, B): the two remaining spatial axes in their original order; for a 2D
        image (H, W, 1) with axis -1 and index 0 that is (H, W).
    """
    shape = tuple(volume.shape)  # type: ignore[attr-defined]
    if len(shape) < 3:
        raise ValueError(f"take_slice needs (..., I, J, K), got shape {shape}")
    dim = len(shape) - 3 + normalize_axis(axis)
    if not -shape[dim] <= index < shape[dim]:
        raise IndexError(f"slice {index} out of range for axis {axis} of shape {shape}")
    key: list[Any] = [slice(None)] * len(shape)
    key[dim] = index
    return volume[tuple(key)]  # type: ignore[index]


@contextmanager
def reading(path: Path | str, what: str) -> Iterator[None]:
    """Turn any decoder failure inside the block into a DataError naming the file.

    Third-party decoders (PIL, nibabel, pydicom, tifffile, zlib) raise many unrelated
    types for a corrupt file; callers get one, with the cause chained.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised as DataError, never swallowed
        raise DataError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc


def smallest_label_dtype(values: np.ndarray, path: Path | str) -> np.dtype:
    """uint8, uint16 or int32, whichever holds the (non-negative) label values."""
    if values.size == 0:
        return np.dtype(np.uint8)
    low, high = int(values.min()), int(values.max())
    if low < 0:
        raise DataError(f"{path}: label map holds negative value {low}")
    if high <= 255:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if high <= 65535 else np.dtype(np.int32)


def to_label_map(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Any integral numeric array -> the smallest non-negative integer dtype; DataError else."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise DataError(f"{path}: label map holds NaN or infinite values")
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: label map holds non-integer values")
    return array.astype(smallest_label_dtype(array, path), copy=False)
