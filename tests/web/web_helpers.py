"""Constants and small helpers shared by the web tests (conftest.py imports them too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssam.web.encoding import png_bytes
from ssam.web.settings import ServerSettings

WEB_LABELS = ["polyp", "lung"]
TINY_SIZE = 64
MIB = 1024 * 1024


def random_png(seed: int, shape: tuple[int, int] = (40, 48)) -> bytes:
    """A fresh RGB PNG (a new image, so nothing of it is cached yet)."""
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


def default_settings(upload_root: Path, **changes) -> ServerSettings:
    fields = {
        "max_upload_bytes": 2 * MIB,
        "max_pixels": 1_000_000,
        "max_voxels": 2_000_000,
        "max_slices": 64,
        "cache_bytes": 64 * MIB,
        "queue_size": 8,
        "upload_dir": upload_root,
        **changes,
    }
    return ServerSettings(**fields)
