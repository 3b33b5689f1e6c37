"""Staging uploads, including DICOM series: several DICOM files in one form, or one .zip of them.

Every slice is stored under a server-chosen name (``series/slice0000.dcm``, ...) in the
upload's temporary folder, so neither form field names nor zip member names ever become
paths. A zip's member count and declared uncompressed sizes are checked before anything is
extracted (a zip bomb is a 413 at once), and extraction copies at most the declared size.
The same limits as a single upload apply: total bytes, slice count, voxels (from the
headers, through ``check_dimensions``). Mixed series are the reader's own error, a 422
naming their SeriesInstanceUIDs.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from ssam.data.io import read_header
from ssam.data.properties import ImageProperties
from ssam.errors import DataError
from ssam.web.errors import PayloadTooLarge, Unprocessable, UnsupportedMedia
from ssam.web.settings import ServerSettings
from ssam.web.uploads import (
    CHUNK,
    AsyncReadable,
    StagedUpload,
    check_dimensions,
    identify_upload,
    new_upload_folder,
    readable_message,
    save_upload,
    sniff_format,
)

# A zip starts with its first member's local header, or, when it has no member, with its
# end-of-central-directory record (an empty zip is then "holds no files", not "not a PNG").
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def is_zip(path: Path) -> bool:
    """Whether a stored upload starts like a zip archive (an empty one included)."""
    with path.open("rb") as handle:
        return handle.read(4) in ZIP_MAGICS


def _too_many_slices(count: int, settings: ServerSettings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the series has {count} files, over the limit of {settings.max_slices} slices"
    )


def _check_slice(path: Path) -> None:
    """415 unless ``path`` is a DICOM file (with its 'DICM' preamble)."""
    with path.open("rb") as handle:
        if sniff_format(handle.read(132)) != "dicom":
            raise UnsupportedMedia(
                "every file of a series upload must be DICOM (with its 'DICM' preamble)"
            )


def extract_zip(archive: Path, target: Path, settings: ServerSettings) -> int:
    """Extract a zip's files as ``target/slice0000.dcm``, ... -> how many.

    413 when the archive declares more members than ``max_slices`` or more uncompressed
    bytes than ``max_upload_bytes``, checked before extracting; 422 for a corrupt archive.
    Folders and hidden files (``__MACOSX/``, ``.DS_Store``) are skipped.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [
                m
                for m in bundle.infolist()
                if not m.is_dir()
                and not Path(m.filename).name.startswith(".")
                and not m.filename.startswith("__MACOSX/")
            ]
            if len(members) > settings.max_slices:
                raise _too_many_slices(len(members), settings)
            declared = sum(m.file_size for m in members)
            if declared > settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"the zip declares {declared:,} uncompressed bytes, over the limit of "
                    f"{settings.max_upload_bytes:,} bytes"
                )
            if not members:
                raise Unprocessable("the zip holds no files")
            target.mkdir()
            for index, member in enumerate(members):
                out_path = target / f"slice{index:04d}.dcm"
                with bundle.open(member) as source, out_path.open("xb") as out:
                    # Copy no more than declared, whatever the stream would give.
                    left = member.file_size
                    while left > 0 and (chunk := source.read(min(CHUNK, left))):
                        out.write(chunk)
                        left -= len(chunk)
                _check_slice(out_path)
    # RuntimeError: an encrypted member; zlib.error / EOFError: corrupt or truncated data.
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            RuntimeError, zlib.error) as err:  # fmt: skip
        raise Unprocessable(f"cannot read the zip: {readable_message(err, archive)}") from None
    return len(members)


def read_series_header(folder: Path, settings: ServerSettings) -> ImageProperties:
    """Header of the stored series (422 for mixed or broken series), checked for size."""
    try:
        header = read_header(folder)
    except (DataError, ValueError, OSError) as err:
        message = readable_message(err, folder)
        raise Unprocessable(f"cannot read the DICOM series: {message}") from None
    check_dimensions(header, settings)
    return header


async def stage_uploads(sources: Sequence[AsyncReadable], settings: ServerSettings) -> StagedUpload:
    """Save, sniff and check one file (``identify_upload``), or a DICOM series: several DICOM
    files, or one zip of them, stored as a series folder.

    ``digest``: SHA-256 of a single upload's bytes; for several files, the SHA-256 of their
    digests in upload order. The caller owns (and must clean up) the result.
    """
    folder = new_upload_folder(settings)
    series = folder / "series"
    try:
        if len(sources) > settings.max_slices:
            raise _too_many_slices(len(sources), settings)
        digests, total = [], 0
        stored: list[Path] = []
        for index, source in enumerate(sources):
            path = folder / f"upload{index:04d}"
            part, size = await save_upload(source, path, settings.max_upload_bytes, total)
            digests.append(part)
            total += size
            stored.append(path)
        digest = digests[0] if len(digests) == 1 else _combined(digests)
        if len(stored) == 1 and not is_zip(stored[0]):
            stored[0].rename(folder / "upload")
            path, kind, header = await asyncio.to_thread(identify_upload, folder, settings)
            return StagedUpload(folder, path, kind, digest, total, header)
        if len(stored) == 1:
            await asyncio.to_thread(extract_zip, stored[0], series, settings)
        else:
            series.mkdir()
            for index, path in enumerate(stored):
                _check_slice(path)
                path.rename(series / f"slice{index:04d}.dcm")
        header = await asyncio.to_thread(read_series_header, series, settings)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedUpload(folder, series, "dicom", digest, total, header)


def _combined(digests: list[str]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests)).hexdigest()
