"""On-disk cache of SVD factors, keyed by the SHA-256 of the base checkpoint.

The SVD of ViT-B's 50 targets takes seconds; it depends only on the checkpoint's weights, so
it is computed once per checkpoint and reloaded from ``<cache>/svd/<sha256>.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ssam.atomic import atomic_path
from ssam.tuning.svd import SVDFactors
from ssam.weights import get_cache_dir

_PARTS = ("U", "S", "Vh")


def svd_cache_path(sha256: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or get_cache_dir()) / "svd" / f"{sha256}.safetensors"


def load_svd_factors(sha256: str, cache_dir: Path | None = None) -> dict[str, SVDFactors]:
    """Cached factors by module name; empty when absent or unreadable (then recomputed)."""
    path = svd_cache_path(sha256, cache_dir)
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = {key.rsplit(".", 1)[0] for key in f.keys()}
            return {
                name: SVDFactors(*(f.get_tensor(f"{name}.{part}") for part in _PARTS))
                for name in names
            }
    except (SafetensorError, OSError, ValueError):
        return {}


def save_svd_factors(
    sha256: str, factors: dict[str, SVDFactors], cache_dir: Path | None = None
) -> Path:
    """Write ``factors`` atomically (temporary file, then rename)."""
    path = svd_cache_path(sha256, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}.{part}": getattr(f, part).contiguous()
        for name, f in factors.items()
        for part in _PARTS
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    return path
