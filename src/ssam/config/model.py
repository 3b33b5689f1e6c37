"""Model configuration: which SAM, which input size, which text encoder, which method."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from ssam.sam.variants import DEFAULT_VARIANT, SAM_VARIANTS
from ssam.text import TEXT_ENCODERS
from ssam.tuning.methods import METHODS


class ModelConfig(BaseModel):
    """How to build an S-SAM model. Paths of None mean the official file: LiteMedSAM's from
    its installed package; others from the cache (downloaded and verified when
    ``allow_download`` and online).

    ``random_text_tower``: True builds the text encoder's architecture with seeded random
    weights (no CLIP file needed; each label name still gets its own token); False requires
    the CLIP weights; None (default) uses them when given, cached or downloadable, and
    otherwise falls back to the random tower with a warning. ``svd_targets`` None: the
    encoder family's (every Linear/Conv2d the paper tunes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str = DEFAULT_VARIANT
    image_size: int = 256
    sam_checkpoint: Path | None = None
    text_encoder: str = "clip_vit_b32"
    clip_checkpoint: Path | None = None
    random_text_tower: bool | None = None
    method: str = "ssam"
    svd_targets: tuple[str, ...] | None = None
    svd_cache: bool = True
    lora_rank: int = 4  # method "lora" only: rank of each low-rank change (SAMed: 4)
    allow_download: bool = True

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in SAM_VARIANTS:
            raise ValueError(f"unknown SAM variant {value!r}; known: {sorted(SAM_VARIANTS)}")
        return value

    @field_validator("text_encoder")
    @classmethod
    def _known_text_encoder(cls, value: str) -> str:
        if value not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {value!r}; known: {sorted(TEXT_ENCODERS)}")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; known: {sorted(METHODS)}")
        return value

    @field_validator("lora_rank")
    @classmethod
    def _positive_rank(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"lora_rank must be at least 1, got {value}")
        return value

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value <= 0 or value % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {value}")
        return value
