"""2D raster formats: PNG, JPEG, BMP (via Pillow) and TIFF (via tifffile).

Arrays come back channels-first as a volume of depth one, (C, H, W, 1), in the stored
dtype (uint8, uint16 for 16-bit files, int32/float32 for exotic modes). Alpha: a constant
alpha channel is dropped; a varying one (real transparency) is a DataError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ssam.data.properties import ImageProperties, pixel_affine, reading
from ssam.errors import DataError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")

_MODE_DTYPES = {
    "I;16": "uint16",
    "I;16B": "uint16",
    "I;16L": "uint16",
    "I": "int32",
    "F": "float32",
}
_KEEP_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"}


def _raster_properties(
    path: Path, height: int, width: int, n_channels: int, dtype: str
) -> ImageProperties:
    return ImageProperties(
        path=path,
        shape=(height, width, 1),
        spacing=(1.0, 1.0, 1.0),
        affine=pixel_affine((1.0, 1.0, 1.0)),
        kind="2d",
        n_channels=n_channels,
        dtype=dtype,
    )


def _drop_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, C) with C in (2, 4) has alpha last: drop it if constant, else DataError."""
    alpha = array[..., -1]
    if alpha.min() != alpha.max():
        raise DataError(
            f"{path}: image has a varying alpha channel (transparency); "
            "flatten it onto a background and save without alpha"
        )
    return array[..., :-1]


def _channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C', H, W, 1) with alpha handled."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported 2D image shape {array.shape}")
    if array.shape[-1] in (2, 4):
        array = _drop_alpha(array, path)
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))[..., None]


def _pil_to_array(image: Image.Image, as_mask: bool) -> np.ndarray:
    """Pillow image -> (H, W) or (H, W, C) array; palette indices are kept for masks."""
    mode = image.mode
    if mode == "P" and as_mask:
        return np.asarray(image)
    if mode == "1":
        binary = np.asarray(image).astype(np.uint8)
        return binary if as_mask else binary * np.uint8(255)
    if mode not in _KEEP_MODES:
        has_alpha = "transparency" in image.info or mode in ("PA", "RGBa", "La")
        image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image)
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        # Pillow opens some 16-bit greyscale PNGs as 32-bit "I": keep them 16-bit.
        array = array.astype(np.uint16)
    return array


def _read_pil(path: Path, as_mask: bool) -> np.ndarray:
    with reading(path, "image"), Image.open(path) as image:
        image.load()
        return _pil_to_array(image, as_mask)


def _tiff_to_yxs(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """tifffile series array with axes string -> (H, W) or (H, W, S)."""
    keep = [i for i, a in enumerate(axes) if a in "YXS" or array.shape[i] != 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes == "SYX":
        array, axes = np.moveaxis(array, 0, -1), "YXS"
    if axes not in ("YX", "YXS"):
        raise DataError(
            f"{path}: TIFF with axes '{axes}' and shape {array.shape} is not a single 2D "
            "image (multi-page stacks are not supported; save one image per file or NIfTI)"
        )
    return array


def _read_tiff(path: Path) -> np.ndarray:
    with reading(path, "TIFF image"), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    return _tiff_to_yxs(array, axes, path)


def read_raster(path: Path, as_mask: bool = False) -> tuple[np.ndarray, ImageProperties]:
    """Read a PNG/JPEG/BMP/TIFF file.

    Returns:
        array: (C, H, W, 1), C = 1 (grey) or 3 (RGB), stored dtype (uint8/uint16/...).
            With ``as_mask`` palette images give their indices instead of colours.
        properties: kind "2d", spacing 1 (pixels).
    """
    is_tiff = path.name.lower().endswith(TIFF_SUFFIXES)
    raw = _read_tiff(path) if is_tiff else _read_pil(path, as_mask)
    array = _channels_first(raw, path)
    props = _raster_properties(
        path, array.shape[1], array.shape[2], array.shape[0], str(array.dtype)
    )
    return array, props


def read_raster_header(path: Path) -> ImageProperties:
    """Size, channels and dtype of a PNG/JPEG/BMP/TIFF file without decoding its pixels."""
    if path.name.lower().endswith(TIFF_SUFFIXES):
        with reading(path, "TIFF header"), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = series.shape, series.axes, str(series.dtype)
        # a zero-strided stand-in of the declared shape: nothing is allocated
        yxs = _tiff_to_yxs(np.broadcast_to(np.uint8(0), shape), axes, path)
        channels = yxs.shape[2] if yxs.ndim == 3 else 1
        channels -= 1 if channels in (2, 4) else 0
        return _raster_properties(path, yxs.shape[0], yxs.shape[1], channels, dtype)
    with reading(path, "image header"), Image.open(path) as image:
        width, height = image.size
        bands = [b for b in image.getbands() if b != "A"]
        mode = image.mode
    channels = 3 if mode == "P" else len(bands)
    return _raster_properties(path, height, width, channels, _MODE_DTYPES.get(mode, "uint8"))


def write_raster(labels: np.ndarray, path: Path) -> None:
    """Write a (H, W) label map as 8-bit (or 16-bit if needed) PNG, or as TIFF."""
    if path.name.lower().endswith(TIFF_SUFFIXES):
        tifffile.imwrite(path, labels)
        return
    if path.name.lower().endswith(".png"):
        # uint8 -> mode "L", uint16 -> mode "I;16": both are lossless PNG.
        array = labels if labels.dtype == np.uint8 else labels.astype(np.uint16)
        Image.fromarray(np.ascontiguousarray(array)).save(path)
        return
    raise DataError(f"{path}: label maps are written as .png, .tif(f), .nii or .nii.gz")
