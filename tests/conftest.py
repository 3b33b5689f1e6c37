"""Shared fixtures: an isolated cache, tiny official-layout checkpoints, the real data folder,
one torch thread and a trained tiny adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from predict_helpers import lite_model_config, one_thread, train_adapter
from ssam.config.model import ModelConfig
from ssam.factory import create_model
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
TINY_SIZE = 64


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty cache folder: nothing leaks between tests or to ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SSAM_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM (real architecture, seeded random weights) saved in the official key layout."""
    sam = build_random_sam(get_sam_spec("tiny"), seed=0)
    return save_state_dict(sam.state_dict(), tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth")


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Torch on one thread for a whole module: ``pytest.mark.usefixtures("single_thread")``."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def adapter(single_thread, tiny_checkpoint, tmp_path_factory) -> Path:
    """A tiny adapter trained a few steps on one thread, saved once per module that asks."""
    return train_adapter(tiny_checkpoint, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def lite_adapter(single_thread, tmp_path_factory) -> Path:
    """A LiteMedSAM adapter (the default base, 64 px, random text tower) trained two steps."""
    return train_adapter(None, tmp_path_factory.mktemp("lite"), config=lite_model_config())


@pytest.fixture()
def tiny_config(tiny_checkpoint) -> ModelConfig:
    return ModelConfig(
        variant="tiny",
        image_size=TINY_SIZE,
        sam_checkpoint=tiny_checkpoint,
        text_encoder="tiny",
        allow_download=False,
    )


@pytest.fixture()
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return create_model(tiny_config)


@pytest.fixture(scope="session")
def kvasir_pair(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """One real Kvasir-SEG image (H, W, 3) uint8 and its binary mask (H, W) bool."""
    folder = shared_data / "kvasir-seg"
    name = sorted(p.stem for p in (folder / "images").glob("*.jpg"))[0]
    image = np.asarray(Image.open(folder / "images" / f"{name}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(folder / "masks" / f"{name}.png").convert("L")) > 127
    return image, mask
