"""Uploaded files: sniffed by content, stored under server-chosen names, checked, decoded.

Nothing a client sends becomes a path: each upload goes to ``upload`` in a fresh temporary
folder, and after its first bytes are recognised (PNG, JPEG, DICOM with its ``DICM``
preamble, NIfTI-1/2, gzipped or not) it is renamed to ``image`` plus that format's suffix,
which the data layer's readers need. Sizes are checked from the header before any pixel
data is decoded, so a small compressed file cannot expand past the limits. PNG and JPEG
sizes are read by Pillow's format plugin directly: ``Image.open`` itself refuses images
past Pillow's pixel ceiling (DecompressionBombError) before their size could be answered
with a 413.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from ssam.data.io import read_header, read_image
from ssam.data.properties import ImageProperties, reading
from ssam.errors import DataError
from ssam.inference.inputs import spacing_is_known
from ssam.web.errors import PayloadTooLarge, Unprocessable, UnsupportedMedia
from ssam.web.settings import ServerSettings

CHUNK = 1024 * 1024
SNIFF_BYTES = 64 * 1024
# Format name -> the suffix the stored file gets (the readers dispatch on it).
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii", "nifti-gz": ".nii.gz"}


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 single file (``n+1``) or NIfTI-2 (``n+2``), either byte order."""
    if len(head) < 348:
        return False
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    if 348 in sizes and head[344:348] == b"n+1\x00":
        return True
    return 540 in sizes and head[4:12] == b"n+2\x00\r\n\x1a\n"


def _gunzip_prefix(head: bytes, size: int = 1024) -> bytes:
    """The first ``size`` bytes of a gzip stream's content (b"" if it is not one)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, size)
    except zlib.error:
        return b""


def sniff_format(head: bytes) -> str | None:
    """Format of a file from its first bytes: a key of ``SUFFIXES``, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x1f\x8b"):
        return "nifti-gz" if _is_nifti_header(_gunzip_prefix(head)) else None
    return "nifti" if _is_nifti_header(head) else None


@dataclass
class StagedUpload:
    """An upload on disk, recognised and within the limits, not yet decoded.

    Attributes:
        folder: the temporary folder that holds it (removed by ``cleanup``).
        path: the stored file, ``folder/image.<suffix>``.
        format: "png", "jpeg", "dicom" or "nifti".
        digest: SHA-256 (hex) of the uploaded bytes.
        size: bytes uploaded.
        header: properties read from the header (shape, spacing).
    """

    folder: Path
    path: Path
    format: str
    digest: str
    size: int
    header: ImageProperties

    def cleanup(self) -> None:
        """Remove the temporary folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class DecodedUpload:
    """A decoded upload: image (C, I, J, K) in its stored dtype and its geometry."""

    image: np.ndarray
    properties: ImageProperties
    format: str
    digest: str
    spacing_known: bool


def new_upload_folder(settings: ServerSettings) -> Path:
    """A fresh private folder under ``settings.upload_dir`` (or the system temp dir)."""
    parent = settings.upload_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="ssam-upload-", dir=parent))


async def save_upload(
    source: AsyncReadable, target: Path, limit: int, used: int = 0
) -> tuple[str, int]:
    """Copy ``source`` to ``target`` in chunks -> (SHA-256 hex, size); 413 once ``used``
    (bytes of the same request already stored) plus its size passes ``limit``."""
    digest, size = hashlib.sha256(), 0
    with target.open("xb") as out:
        while chunk := await source.read(CHUNK):
            size += len(chunk)
            if used + size > limit:
                raise PayloadTooLarge(
                    f"upload is larger than the limit of {limit:,} bytes ({limit / 2**20:.1f} MiB)"
                )
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise Unprocessable("the uploaded file is empty")
    return digest.hexdigest(), size


def check_pixels(height: int, width: int, limit: int, what: str = "the limit") -> None:
    """413 when a height x width image has more than ``limit`` pixels (``what`` names it)."""
    pixels = height * width
    if pixels > limit:
        raise PayloadTooLarge(
            f"image of {height} x {width} = {pixels:,} pixels is over {what} of "
            f"{limit:,} pixels; downscale it first"
        )


def raster_pixel_limit(settings: ServerSettings) -> tuple[int, str]:
    """(limit, its name) for PNG/JPEG: ``max_pixels``, or Pillow's ceiling if that is lower.

    ``Image.open`` refuses more than twice ``Image.MAX_IMAGE_PIXELS`` (None: no ceiling).
    """
    ceiling = Image.MAX_IMAGE_PIXELS
    if ceiling is not None and 2 * int(ceiling) < settings.max_pixels:
        return 2 * int(ceiling), "the image decoder's limit"
    return settings.max_pixels, "the limit"


def raster_size(path: Path, kind: str) -> tuple[int, int] | None:
    """(height, width) of a PNG or JPEG from its header; None for the other formats.

    The format plugin reads the header only and, unlike ``Image.open``, has no
    decompression-bomb check, so a huge declared size reaches ``check_pixels``.
    """
    plugin = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}
    if kind not in plugin:
        return None
    with reading(path, "image header"), plugin[kind](path) as image:
        width, height = image.size
    return height, width


def check_dimensions(header: ImageProperties, settings: ServerSettings, axis: int = -1) -> None:
    """413 when the image or volume is over the configured pixel/voxel/slice limits."""
    shape = header.shape
    if header.is_2d:
        check_pixels(shape[0], shape[1], settings.max_pixels)
        return
    voxels = math.prod(shape)
    if voxels > settings.max_voxels:
        raise PayloadTooLarge(
            f"volume of {' x '.join(map(str, shape))} = {voxels:,} voxels is over the limit of "
            f"{settings.max_voxels:,} voxels; crop or resample it first"
        )
    if shape[axis] > settings.max_slices:
        raise PayloadTooLarge(
            f"volume has {shape[axis]} slices along axis {axis % 3}, over the limit of "
            f"{settings.max_slices}"
        )


def readable_message(err: Exception, path: Path) -> str:
    """An error message with the server's temporary paths replaced by 'upload'."""
    return str(err).replace(str(path), "upload").replace(str(path.parent), "upload")


def _header_error(err: Exception, path: Path) -> Unprocessable:
    return Unprocessable(f"cannot read the image header: {readable_message(err, path)}")


def identify_upload(folder: Path, settings: ServerSettings) -> tuple[Path, str, ImageProperties]:
    """Sniff ``folder/upload``, rename it with its format's suffix, read and check its header.

    Raises 415 for an unknown format, 422 for a corrupt header, 413 for a too large image
    (for PNG and JPEG checked before Pillow opens it: see ``raster_size``).
    """
    raw = folder / "upload"
    with raw.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    kind = sniff_format(head)
    if kind is None:
        raise UnsupportedMedia(
            "the upload is not a PNG, JPEG, DICOM (with its 'DICM' preamble) or NIfTI "
            "(.nii, .nii.gz) file"
        )
    path = raw.rename(folder / f"image{SUFFIXES[kind]}")
    try:
        size = raster_size(path, kind)
    except (DataError, ValueError, OSError) as err:
        raise _header_error(err, path) from None
    if size is not None:
        check_pixels(*size, *raster_pixel_limit(settings))
    try:
        header = read_header(path)
    except (DataError, ValueError, OSError) as err:
        raise _header_error(err, path) from None
    check_dimensions(header, settings)
    return path, kind.removesuffix("-gz"), header


def decode_upload(staged: StagedUpload) -> DecodedUpload:
    """Decode the staged file's pixels (422 if they are corrupt)."""
    try:
        image, properties = read_image(staged.path)
        known = spacing_is_known(properties)
    except (DataError, ValueError, OSError) as err:
        raise Unprocessable(
            f"cannot read the image: {readable_message(err, staged.path)}"
        ) from None
    if image.ndim != 4 or image.shape[0] not in (1, 2, 3):
        raise Unprocessable(f"expected 1 to 3 channels, got an image of shape {image.shape}")
    return DecodedUpload(image, properties, staged.format, staged.digest, known)
