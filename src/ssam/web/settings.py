"""Limits and resources of one ``ssam serve`` process (one validated home for them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIB = 1024 * 1024
# Host names a server always answers to (it binds 127.0.0.1 unless told otherwise).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def normalise_host(name: str) -> str:
    """A host name as the Host check compares it: lower case, no IPv6 brackets or final dot.

    Raises ValueError for something that is not a bare host name ("*" passes: any host).
    """
    host = name.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if host == "*":
        return host
    if not host or any(c in host for c in "/@?# \t"):
        raise ValueError(f"{name!r} is not a host name (give it without scheme, path or port)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{name!r}: give the host name without a port") from None
    return host


def normalise_origin(origin: str) -> str:
    """A web origin as browsers send it, ``scheme://host[:port]``, lower case ("*": any)."""
    value = origin.strip().lower().rstrip("/")
    if value == "*":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(f"{origin!r} is not an origin like http://host:port")
    return f"{parts.scheme}://{parts.netloc}"


class ServerSettings(BaseModel):
    """What the web app accepts and how much it holds.

    Attributes:
        max_upload_bytes: largest upload accepted (bigger: 413).
        max_pixels: largest 2D image, height x width (bigger: 413).
        max_voxels: largest volume, I x J x K (bigger: 413).
        max_slices: most slices of a volume along the sliced axis (more: 413).
        max_labels: most label names per request (more: 422).
        max_label_chars: longest label name (longer: 422).
        max_refine_points: most points in one ``POST /v1/refine`` (more: 422).
        refine_undo_depth: refine edits per job and label that ``/v1/refine/undo`` can
            take back (older ones stay applied).
        workers: jobs run at the same time (model calls still take turns).
        queue_size: jobs that may wait behind the running ones; one more is a 429.
        request_timeout_s: a ``POST /v1/segment`` not answered by then is a 504 (and the job
            is cancelled at its next slice batch).
        cache_bytes: byte budget of the image-embedding LRU cache (0 turns it off).
        keep_results: finished jobs kept for the web page's slice views and downloads.
        upload_dir: parent of the per-request temporary folders (None: the system's).
        allowed_hosts: Host header names answered besides ``LOOPBACK_NAMES`` (others: 400,
            against DNS rebinding); "*" answers any.
        allowed_origins: origins (``scheme://host[:port]``) whose cross-origin requests are
            allowed, with CORS headers; a POST or DELETE from any other origin is a 403.
        header_timeout_s: a connection that has not sent a whole request head this long
            after it opened (or after the first byte of its next request) is closed.
        keep_alive_s: an idle keep-alive connection is closed after this long.
        max_client_connections: open connections per client address; more are refused
            with 429 (behind a proxy the proxy is the one client: raise it there).
    """

    model_config = ConfigDict(frozen=True)

    max_upload_bytes: int = Field(default=256 * MIB, gt=0)
    max_pixels: int = Field(default=40_000_000, gt=0)
    max_voxels: int = Field(default=64_000_000, gt=0)
    max_slices: int = Field(default=512, gt=0)
    max_labels: int = Field(default=16, ge=1, le=255)
    max_label_chars: int = Field(default=64, ge=1)
    max_refine_points: int = Field(default=64, ge=1, le=4096)
    refine_undo_depth: int = Field(default=32, ge=1, le=1024)
    workers: int = Field(default=1, ge=1, le=16)
    queue_size: int = Field(default=4, ge=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    cache_bytes: int = Field(default=512 * MIB, ge=0)
    keep_results: int = Field(default=4, ge=1)
    upload_dir: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_client_connections: int = Field(default=32, ge=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalise_host(host) for host in hosts))

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalise_origin(origin) for origin in origins))

    @property
    def capacity(self) -> int:
        """Jobs admitted at once: running plus waiting."""
        return self.workers + self.queue_size

    @property
    def host_names(self) -> tuple[str, ...]:
        """Every Host header name answered: the loopback names, then ``allowed_hosts``."""
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, *self.allowed_hosts)))
