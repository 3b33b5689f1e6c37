"""Results as bytes: run-length JSON, PNG and NIfTI files, slice pictures, overlays.

Run-length encoding (``"encoding": "rle"``) reads the array in C order (last axis fastest,
as numpy's ``ravel``): a label map as runs of ``values`` with their ``lengths``; a binary mask
as ``counts`` of alternating runs, starting with a run of 0 (which may be empty). Both carry
``size``, the array's shape. ``decode_label_map_rle`` and ``decode_mask_rle`` undo them.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from ssam.data.io import label_map_suffix, take_slice, write_label_map, write_volume
from ssam.errors import DataError
from ssam.inference.dicom_seg import build_dicom_seg
from ssam.inference.files import describe_labels
from ssam.inference.overlay import add_legend, blend_overlay, to_rgb
from ssam.web.engine import SLICE_AXIS, WebSegmentation
from ssam.web.errors import Unprocessable

MASK_FORMATS = ("rle", "png", "nifti")


@dataclass(frozen=True)
class FileBytes:
    """A file to send: content, media type, and a server-chosen download name."""

    data: bytes
    media_type: str
    filename: str


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1D array -> (start index, length) of each run of equal values."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return starts, lengths


def encode_label_map_rle(label_map: np.ndarray) -> dict:
    """Integer array -> {"encoding", "size", "order", "values", "lengths"}."""
    flat = np.ascontiguousarray(label_map).ravel()
    starts, lengths = _runs(flat)
    return {
        "encoding": "rle",
        "size": list(label_map.shape),
        "order": "C",
        "values": flat[starts].astype(int).tolist(),
        "lengths": lengths.astype(int).tolist(),
    }


def decode_label_map_rle(data: dict) -> np.ndarray:
    """Inverse of ``encode_label_map_rle``: a uint8 (uint16 above 255) array of ``size``."""
    values = np.asarray(data["values"], dtype=np.int64)
    dtype = np.uint8 if values.size == 0 or values.max() <= 255 else np.uint16
    flat = np.repeat(values, np.asarray(data["lengths"], dtype=np.int64)).astype(dtype)
    return flat.reshape(data["size"])


def encode_mask_rle(mask: np.ndarray) -> dict:
    """Bool array -> {"encoding", "size", "order", "counts"}; counts start with zeros."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    starts, lengths = _runs(flat)
    counts = lengths.astype(int).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"encoding": "rle", "size": list(mask.shape), "order": "C", "counts": counts}


def decode_mask_rle(data: dict) -> np.ndarray:
    """Inverse of ``encode_mask_rle``: a bool array of ``size``."""
    counts = np.asarray(data["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(data["size"])


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8/uint16 array -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def label_map_file(result: WebSegmentation, array: np.ndarray | None = None) -> FileBytes:
    """The label map (or another integer ``array`` of its shape) as the upload's natural file:
    PNG for 2D rasters, NIfTI (.nii.gz, the upload's affine and header, label names in its
    header) for NIfTI, DICOM and volumes."""
    names = result.labels if array is None else ()
    array = result.label_map if array is None else array
    suffix = label_map_suffix(result.properties)
    properties = result.properties if suffix == ".png" else _as_nifti(result).properties
    with tempfile.TemporaryDirectory(prefix="ssam-result-") as folder:
        target = Path(folder) / f"label_map{suffix}"
        path = write_label_map(_spatial(array), properties, target, names)
        data = path.read_bytes()
    media = "image/png" if suffix == ".png" else "application/gzip"
    return FileBytes(data, media, f"label_map{suffix}")


def compact_intensities(values: np.ndarray) -> np.ndarray:
    """``values`` as int16 when every one is a whole number in its range (DICOM series decode
    as float32 even when all are whole HU), else unchanged: half the memory a kept job holds."""
    if values.dtype.kind != "f" or values.size == 0:
        return values
    low, high = float(np.min(values)), float(np.max(values))
    limits = np.iinfo(np.int16)
    if not (np.isfinite(low) and np.isfinite(high) and low >= limits.min and high <= limits.max):
        return values
    if not all(np.array_equal(plane, np.rint(plane)) for plane in values):
        return values
    return values.astype(np.int16)


class ImageVolume:
    """A kept job's image for the page's viewer: its values (e.g. HU; None: the 0-255 values
    the model saw) until the NIfTI file is first asked for, then that file's bytes only."""

    def __init__(self, values: np.ndarray | None) -> None:
        self._values = None if values is None else compact_intensities(values)
        self._file: FileBytes | None = None
        self._lock = threading.Lock()

    def file(self, result: WebSegmentation) -> FileBytes:
        """``image.nii.gz`` (``intensities_file``), built once."""
        with self._lock:
            if self._file is None:
                self._file = intensities_file(result, self._values)
                self._values = None
            return self._file


def intensities_file(result: WebSegmentation, values: np.ndarray | None) -> FileBytes:
    """The image beneath the label map as NIfTI (.nii.gz, same affine and header):
    ``values``, its stored intensities (I, J, K), or where None the 0-255 values the model
    saw (first channel). What the page's volume viewer loads; DICOM series arrive as NIfTI."""
    if values is None:
        values = result.display[0]
    with tempfile.TemporaryDirectory(prefix="ssam-result-") as folder:
        target = Path(folder) / "image.nii.gz"
        write_volume(_spatial(values), _as_nifti(result).properties, target)
        data = target.read_bytes()
    return FileBytes(data, "application/gzip", "image.nii.gz")


def labels_file(result: WebSegmentation) -> FileBytes:
    """The label map's key, as ``ssam predict`` writes it beside a label map (``.labels.json``)."""
    data = json.dumps(describe_labels(result.labels), indent=2).encode()
    return FileBytes(data, "application/json", "label_map.labels.json")


def dicom_seg_file(result: WebSegmentation, sources: Sequence[Dataset]) -> FileBytes:
    """The label map as a DICOM-SEG over the uploaded DICOM file or series (``sources``:
    its headers in slice order), one segment per label name; 422 when the upload was not
    DICOM or its headers cannot make one."""
    if not sources:
        raise Unprocessable(f"a DICOM-SEG needs a DICOM upload; this one was {result.format}")
    try:
        seg = build_dicom_seg(result.label_map, result.labels, sources, Path("upload"))
    except DataError as err:
        raise Unprocessable(str(err)) from None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return FileBytes(buffer.getvalue(), "application/dicom", "label_map.seg.dcm")


def encode_array(result: WebSegmentation, array: np.ndarray, fmt: str, is_mask: bool) -> dict:
    """A label map or one mask in the asked format: RLE, or a base64 PNG/NIfTI file."""
    if fmt == "rle":
        return encode_mask_rle(array) if is_mask else encode_label_map_rle(array)
    if fmt == "png" and result.is_volume:
        raise Unprocessable("format 'png' is for 2D images; use 'nifti' or 'rle' for volumes")
    values = array.astype(np.uint8) * (255 if is_mask and fmt == "png" else 1)
    if fmt == "png":
        data, media = png_bytes(values), "image/png"
    else:
        file = label_map_file(_as_nifti(result), values)
        data, media = file.data, file.media_type
    return {"encoding": fmt, "media_type": media, "data": base64.b64encode(data).decode("ascii")}


def _as_nifti(result: WebSegmentation) -> WebSegmentation:
    """The same result, written as NIfTI whatever the upload was."""
    return replace(result, properties=replace(result.properties, kind="3d"))


def _spatial(array: np.ndarray) -> np.ndarray:
    """A 2D result (H, W) as (H, W, 1); volumes unchanged."""
    return array[..., None] if array.ndim == 2 else array


def check_slice(result: WebSegmentation, index: int) -> None:
    """422 unless 0 <= index < number of slices."""
    if not 0 <= index < result.n_slices:
        raise Unprocessable(f"slice {index} is out of range 0..{result.n_slices - 1}")


def _orient(picture: np.ndarray, result: WebSegmentation) -> np.ndarray:
    """NIfTI slices are shown rotated 90 degrees counter-clockwise (RAS arrays look the usual
    way up), as ``ssam predict``'s overlays."""
    return np.ascontiguousarray(np.rot90(picture)) if result.format == "nifti" else picture


def display_slice(result: WebSegmentation, index: int) -> np.ndarray:
    """Slice ``index`` as seen by the model, oriented for display: (H, W, 3) uint8."""
    check_slice(result, index)
    return _orient(to_rgb(take_slice(result.display, SLICE_AXIS, index)), result)


def label_slice(result: WebSegmentation, index: int) -> np.ndarray:
    """Slice ``index`` of the label map, oriented as ``display_slice``: (H, W) uint8."""
    check_slice(result, index)
    return _orient(take_slice(_spatial(result.label_map), SLICE_AXIS, index), result)


def overlay_png(result: WebSegmentation, index: int, opacity: float) -> bytes:
    """Slice ``index`` with the label map blended in (``opacity`` 0-1), outlines, a legend."""
    channels_first = np.moveaxis(display_slice(result, index), -1, 0)
    picture = blend_overlay(channels_first, label_slice(result, index), len(result.labels), opacity)
    note = f"slice {index + 1} of {result.n_slices}" if result.is_volume else ""
    return png_bytes(add_legend(picture, result.labels, note))
