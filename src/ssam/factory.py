"""Assemble an S-SAM model from a ``ModelConfig`` (timm's ``create_model`` in spirit).

Order: official SAM modules at the input size -> base checkpoint loaded and fitted -> the
method's injection (SVD factors from the cache or computed once) -> text prompt parts ->
the method's trainable set.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ssam.config.model import ModelConfig
from ssam.model import SSAM
from ssam.sam.build import build_empty_sam, build_sam
from ssam.sam.checkpoint import load_sam_weights
from ssam.sam.variants import get_sam_spec
from ssam.text import TextAffine, build_text_encoder, get_text_spec
from ssam.tuning.lora import inject_lora
from ssam.tuning.methods import configure_trainable, get_method
from ssam.tuning.svd import inject_svd
from ssam.tuning.svd_cache import load_svd_factors, save_svd_factors
from ssam.weights import file_sha256, resolve_weights

log = logging.getLogger(__name__)

TINY_TEXT_SEED = 0


@dataclass(frozen=True)
class BaseInfo:
    """What an adapter must match: the base model it was trained on."""

    variant: str
    image_size: int
    method: str
    text_encoder: str
    svd_targets: tuple[str, ...]
    base_sha256: str | None
    text_sha256: str | None
    lora_rank: int | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "svd_targets": list(self.svd_targets)}


def _inject_svd(sam: torch.nn.Module, config: ModelConfig, sha256: str | None) -> None:
    """SVD-tune ``config.svd_targets``; factors come from the per-checkpoint cache if present."""
    use_cache = config.svd_cache and sha256 is not None
    cached = load_svd_factors(sha256) if use_cache else {}
    factors = inject_svd(sam, config.svd_targets, cached)
    if use_cache and set(factors) - set(cached):
        try:
            save_svd_factors(sha256, factors)
        except OSError as err:
            log.warning("could not write the SVD cache (%s); it will be recomputed next time", err)


def _inject_lora(sam: torch.nn.Module, config: ModelConfig, sha256: str | None) -> None:
    """Rank-``config.lora_rank`` LoRA on q and v of every encoder ``attn.qkv`` (SAMed)."""
    inject_lora(sam, config.lora_rank)


# Method.inject names one of these: (plain SAM, config, checkpoint SHA-256) -> None, in place.
INJECTORS = {"svd": _inject_svd, "lora": _inject_lora}


def _inject(sam: torch.nn.Module, config: ModelConfig, sha256: str | None) -> None:
    method = get_method(config.method)
    if method.inject is not None:
        INJECTORS[method.inject](sam, config, sha256)


def build_text_tower(config: ModelConfig) -> tuple[torch.nn.Module, str | None]:
    """The frozen text encoder ``config`` names and its weights' SHA-256 (None for the
    seeded random tower used without weights)."""
    spec = get_text_spec(config.text_encoder)
    if spec.weights is None and config.clip_checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_TEXT_SEED)  # a random tower must be the same in every run
            return build_text_encoder(spec.name, None), None
    path = resolve_weights(
        config.clip_checkpoint,
        spec.weights,
        "CLIP weights",
        config.allow_download,
        flag="--clip-checkpoint (or, for tests and demos only, `--set model.text_encoder=tiny`: "
        "a random toy text tower)",
    )
    return build_text_encoder(spec.name, path), file_sha256(path)


def create_model(
    config: ModelConfig,
    device: torch.device | str = "cpu",
    sam_checkpoint: Path | None = None,
) -> SSAM:
    """The S-SAM model ``config`` describes, with its method's trainable set, on ``device``.

    ``sam_checkpoint`` overrides ``config.sam_checkpoint``. The model carries ``base_info``.
    """
    spec = get_sam_spec(config.variant)
    path = resolve_weights(
        sam_checkpoint or config.sam_checkpoint,
        spec.weights,
        f"SAM {spec.name} checkpoint",
        config.allow_download,
        flag="--sam-checkpoint",
    )
    sam = build_empty_sam(spec, config.image_size)
    load_sam_weights(sam, path, spec)
    sha256 = file_sha256(path)
    _inject(sam, config, sha256)
    text_encoder, text_sha = build_text_tower(config)
    affine = TextAffine(text_encoder.embed_dim, spec.prompt_embed_dim)
    model = SSAM(sam, affine, text_encoder, config.image_size)
    configure_trainable(model, config.method)
    model.base_info = _base_info(config, sha256, text_sha)
    return model.to(device)


def create_architecture(config: ModelConfig) -> SSAM:
    """The model's structure on the meta device: no weights read, nothing allocated or fetched.

    Enough to count parameters per trainable group (``ssam params``).
    """
    spec = get_sam_spec(config.variant)
    text_dim = get_text_spec(config.text_encoder).embed_dim
    with torch.device("meta"):
        sam = build_sam(spec, config.image_size)
        _inject(sam, config.model_copy(update={"svd_cache": False}), None)
        model = SSAM(sam, TextAffine(text_dim, spec.prompt_embed_dim), None, config.image_size)
    configure_trainable(model, config.method)
    model.base_info = _base_info(config, None, None)
    return model


def _base_info(config: ModelConfig, sha256: str | None, text_sha: str | None) -> BaseInfo:
    return BaseInfo(
        variant=config.variant,
        image_size=config.image_size,
        method=config.method,
        text_encoder=config.text_encoder,
        svd_targets=tuple(config.svd_targets),
        base_sha256=sha256,
        text_sha256=text_sha,
        lora_rank=config.lora_rank if get_method(config.method).inject == "lora" else None,
    )


def count_sam_parameters(variant: str) -> int:
    """Parameters of the official SAM ``variant`` at its own 1024 input (the paper's base)."""
    spec = get_sam_spec(variant)
    with torch.device("meta"):
        sam = build_sam(spec)
    return sum(p.numel() for p in sam.parameters())
