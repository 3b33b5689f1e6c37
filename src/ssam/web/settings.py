"""Limits and resources of one ``ssam serve`` process (one validated home for them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024


class ServerSettings(BaseModel):
    """What the web app accepts and how much it holds.

    Attributes:
        max_upload_bytes: largest upload accepted (bigger: 413).
        max_pixels: largest 2D image, height x width (bigger: 413).
        max_voxels: largest volume, I x J x K (bigger: 413).
        max_slices: most slices of a volume along the sliced axis (more: 413).
        max_labels: most label names per request (more: 422).
        max_label_chars: longest label name (longer: 422).
        workers: jobs run at the same time (model calls still take turns).
        queue_size: jobs that may wait behind the running ones; one more is a 429.
        request_timeout_s: a ``POST /v1/segment`` not answered by then is a 504 (and the job
            is cancelled at its next slice batch).
        cache_bytes: byte budget of the image-embedding LRU cache (0 turns it off).
        keep_results: finished jobs kept for the web page's slice views and downloads.
        upload_dir: parent of the per-request temporary folders (None: the system's).
    """

    model_config = ConfigDict(frozen=True)

    max_upload_bytes: int = Field(default=256 * MIB, gt=0)
    max_pixels: int = Field(default=40_000_000, gt=0)
    max_voxels: int = Field(default=64_000_000, gt=0)
    max_slices: int = Field(default=512, gt=0)
    max_labels: int = Field(default=16, ge=1, le=255)
    max_label_chars: int = Field(default=64, ge=1)
    workers: int = Field(default=1, ge=1, le=16)
    queue_size: int = Field(default=4, ge=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    cache_bytes: int = Field(default=512 * MIB, ge=0)
    keep_results: int = Field(default=4, ge=1)
    upload_dir: Path | None = None

    @property
    def capacity(self) -> int:
        """Jobs admitted at once: running plus waiting."""
        return self.workers + self.queue_size
