"""Constants and small helpers shared by the web tests (conftest.py imports them too)."""

from __future__ import annotations

import numpy as np

from ssam.web.encoding import png_bytes

WEB_LABELS = ["polyp", "lung"]
TINY_SIZE = 64
MIB = 1024 * 1024


def random_png(seed: int, shape: tuple[int, int] = (40, 48)) -> bytes:
    """A fresh RGB PNG (a new image, so nothing of it is cached yet)."""
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
