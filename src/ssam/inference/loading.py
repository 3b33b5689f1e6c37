"""Runnable models from files: a base checkpoint plus an adapter, built as the adapter says.

The adapter's config names the base it was trained on (variant, input size, method, text
encoder, SVD targets); the model is built with exactly those settings, then the adapter is
loaded, which checks the SHA-256 of the base checkpoint (and CLIP weights) against it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from ssam.config.model import ModelConfig
from ssam.errors import AdapterError, summarise_validation
from ssam.factory import create_model
from ssam.model import SSAM
from ssam.tuning.adapter import load_adapter, read_adapter

# Adapter config keys that become ModelConfig fields of the same name.
_CONFIG_KEYS = ("variant", "image_size", "method", "text_encoder")


def model_config_from_adapter(
    adapter_config: dict,
    sam_checkpoint: Path | str | None = None,
    clip_checkpoint: Path | str | None = None,
    allow_download: bool = False,
) -> ModelConfig:
    """The ``ModelConfig`` an adapter was trained with, pointing at the given weight files
    (an adapter trained on the random text tower gets that tower, whatever CLIP file exists)."""
    missing = [key for key in _CONFIG_KEYS if key not in adapter_config]
    if missing:
        raise AdapterError(f"adapter config lacks {missing}; it was not written by ssam")
    fields = {key: adapter_config[key] for key in _CONFIG_KEYS}
    if adapter_config.get("svd_targets"):
        fields["svd_targets"] = tuple(adapter_config["svd_targets"])
    if adapter_config.get("lora_rank") is not None:
        fields["lora_rank"] = adapter_config["lora_rank"]
    # Trained on the seeded random text tower (no CLIP file): build that one again.
    fields["random_text_tower"] = adapter_config.get("text_sha256") is None
    try:
        return ModelConfig(
            **fields,
            sam_checkpoint=Path(sam_checkpoint) if sam_checkpoint is not None else None,
            clip_checkpoint=Path(clip_checkpoint) if clip_checkpoint is not None else None,
            allow_download=allow_download,
        )
    except ValidationError as err:
        raise AdapterError(
            f"adapter config does not describe a model this version builds: "
            f"{summarise_validation(err)}"
        ) from None


def load_adapted_model(
    adapter: Path | str,
    sam_checkpoint: Path | str | None = None,
    clip_checkpoint: Path | str | None = None,
    device: torch.device | str = "cpu",
    allow_download: bool = False,
) -> tuple[SSAM, dict]:
    """(model in eval mode with the adapter loaded, adapter config).

    ``sam_checkpoint``/``clip_checkpoint`` of None mean the official files from the cache.
    Raises ``AdapterError`` naming each property that differs when the adapter was trained
    on another base, ``CheckpointError`` for unreadable or foreign weight files.
    """
    _, adapter_config = read_adapter(adapter)
    try:
        config = model_config_from_adapter(
            adapter_config, sam_checkpoint, clip_checkpoint, allow_download
        )
    except AdapterError as err:
        raise AdapterError(f"{adapter}: {err}") from None
    model = create_model(config)
    load_adapter(model, adapter)
    model.requires_grad_(False)
    return model.to(device).eval(), adapter_config
