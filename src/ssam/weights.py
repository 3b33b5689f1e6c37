"""Official weight files: where they live, how they are fetched and verified.

Nothing is downloaded unless a named official file is missing locally and downloads are allowed.
Every download streams into a temporary file beside its destination, is checked against the
published SHA-256 and only then renamed into place, so a half-written file is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ssam.atomic import atomic_path, write_bytes_atomic
from ssam.errors import CheckpointError, DownloadError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its file name, URL and SHA-256 (hex)."""

    filename: str
    url: str
    sha256: str


def get_cache_dir() -> Path:
    """``$SSAM_CACHE``, else ``$XDG_CACHE_HOME/ssam``, else ``~/.cache/ssam``."""
    if os.environ.get("SSAM_CACHE"):
        return Path(os.environ["SSAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ssam"


def compute_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path, cache_dir: Path | None = None) -> str:
    """SHA-256 of ``path``, remembered by (path, size, mtime) so large checkpoints hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = (cache_dir or get_cache_dir()) / "sha256.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = compute_sha256(path)
        with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
            write_bytes_atomic(index_path, json.dumps(index, indent=1).encode())
    return index[key]


def download_file(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256; the file appears only if it matches."""
    digest = hashlib.sha256()
    try:
        with (
            atomic_path(dest, suffix=".part") as tmp,
            open(tmp, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout) as resp,
        ):
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256.lower():
                raise DownloadError(
                    f"{url}: SHA-256 {digest.hexdigest()} does not match the published "
                    f"{sha256}; the file was discarded"
                )
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"could not download {url} ({err}); without internet, download it elsewhere and "
            f"pass its path, or place it at {dest}"
        ) from None
    return dest


def resolve_weights(
    path: str | Path | None,
    official: WeightsFile | None,
    what: str,
    allow_download: bool = True,
    cache_dir: Path | None = None,
) -> Path:
    """The local file to load: ``path`` if given, else the official file from the cache.

    The cache is ``<cache>/weights/<official filename>``; when missing there and downloads are
    allowed it is fetched and verified. Errors name the file and say what to do.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: {what} file not found")
        return path
    if official is None:
        raise CheckpointError(f"no official {what} file is published; pass its path")
    cached = (cache_dir or get_cache_dir()) / "weights" / official.filename
    if cached.is_file():
        return cached
    if not allow_download:
        raise CheckpointError(
            f"{what} {official.filename} is not in the cache ({cached}) and downloads are off; "
            f"download {official.url} and pass its path"
        )
    return download_file(official.url, cached, official.sha256)
