"""Assemble an S-SAM model from a ``ModelConfig`` (timm's ``create_model`` in spirit).

Order: official SAM modules at the input size -> base checkpoint loaded and fitted -> the
method's injection (SVD factors from the cache or computed once) -> text prompt parts ->
the method's trainable set.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ssam.config.model import ModelConfig
from ssam.errors import CheckpointError, DownloadError
from ssam.model import SSAM
from ssam.sam.build import build_empty_sam, build_sam
from ssam.sam.checkpoint import load_sam_weights
from ssam.sam.families import get_family
from ssam.sam.variants import SamSpec, get_sam_spec
from ssam.text import TextAffine, TextEncoder, build_text_encoder, get_text_spec
from ssam.tuning.lora import inject_lora, qkv_targets
from ssam.tuning.methods import configure_trainable, get_method
from ssam.tuning.svd import inject_svd
from ssam.tuning.svd_cache import load_svd_factors, save_svd_factors
from ssam.weights import PackagedWeights, file_sha256, resolve_weights

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
    """SVD-tune the targets (``config.svd_targets``, else the encoder family's); factors come
    from the per-checkpoint cache if present."""
    use_cache = config.svd_cache and sha256 is not None
    cached = load_svd_factors(sha256) if use_cache else {}
    factors = inject_svd(sam, svd_targets(config), cached)
    if use_cache and set(factors) - set(cached):
        try:
            save_svd_factors(sha256, factors)
        except OSError as err:
            log.warning("could not write the SVD cache (%s); it will be recomputed next time", err)


def _inject_lora(sam: torch.nn.Module, config: ModelConfig, sha256: str | None) -> None:
    """Rank-``config.lora_rank`` LoRA on q and v of every encoder ``attn.qkv`` (SAMed)."""
    family = get_family(config.variant)
    inject_lora(sam, config.lora_rank, qkv_targets(family.lora_qkv, family.qkv_per_head))


# Method.inject names one of these: (plain SAM, config, checkpoint SHA-256) -> None, in place.
INJECTORS = {"svd": _inject_svd, "lora": _inject_lora}


def svd_targets(config: ModelConfig) -> tuple[str, ...]:
    return config.svd_targets or get_family(config.variant).svd_targets


def _inject(sam: torch.nn.Module, config: ModelConfig, sha256: str | None) -> None:
    method = get_method(config.method)
    if method.inject is not None:
        INJECTORS[method.inject](sam, config, sha256)


@dataclass(frozen=True)
class TextTower:
    """A built text encoder, its weights' SHA-256 (None: seeded random weights) and a phrase
    saying where its weights came from."""

    encoder: TextEncoder
    sha256: str | None
    source: str


def _random_text_tower(name: str, why: str) -> TextTower:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_TEXT_SEED)  # a random tower must be the same in every run
        encoder = build_text_encoder(name, None)
    return TextTower(encoder, None, f"{name} with seeded random weights ({why})")


@functools.cache
def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process meets it (a run builds its
    model several times: training, evaluation, prediction)."""
    log.warning(message)


def build_text_tower(config: ModelConfig) -> TextTower:
    """The frozen text encoder ``config`` names (see ``ModelConfig.random_text_tower``)."""
    spec = get_text_spec(config.text_encoder)
    if config.clip_checkpoint is None and (spec.weights is None or config.random_text_tower):
        why = "toy width, no weights exist"
        if spec.weights is not None:
            why = "random_text_tower set: the adapter was trained with them, or asked for"
        return _random_text_tower(spec.name, why)
    try:
        path = resolve_weights(
            config.clip_checkpoint,
            spec.weights,
            "CLIP weights",
            config.allow_download,
            flag="--clip-checkpoint",
        )
    except (CheckpointError, DownloadError) as err:
        if config.clip_checkpoint is not None or config.random_text_tower is False:
            raise
        _warn_once(
            f"text encoder: no {spec.name} weights ({str(err).split(';')[0]}): using its "
            "architecture with seeded random weights; label names still get distinct tokens, "
            "but not CLIP's meaning. For real CLIP pass --clip-checkpoint ViT-B-32.pt"
        )
        return _random_text_tower(spec.name, "no CLIP weights found")
    sha = file_sha256(path)
    return TextTower(build_text_encoder(spec.name, path), sha, f"{spec.name} from {path}")


def describe_weights(spec: SamSpec, path: Path, sha256: str, given: bool) -> str:
    """Where a base checkpoint came from, in a phrase; ``given``: the user named the file."""
    origin = f"{path}"
    if not given and isinstance(spec.weights, PackagedWeights):
        origin = f"{spec.weights.requirement} ({path})"
    return f"{spec.label} from {origin}, SHA-256 {sha256[:12]}"


def create_model(
    config: ModelConfig,
    device: torch.device | str = "cpu",
    sam_checkpoint: Path | None = None,
) -> SSAM:
    """The S-SAM model ``config`` describes, with its method's trainable set, on ``device``.

    ``sam_checkpoint`` overrides ``config.sam_checkpoint``. The model carries ``base_info`` and
    ``weights_source`` (one line: which base and text encoder, from where).
    """
    spec = get_sam_spec(config.variant)
    given = sam_checkpoint or config.sam_checkpoint
    path = resolve_weights(
        given,
        spec.weights,
        f"{spec.label} checkpoint",
        config.allow_download,
        flag="--sam-checkpoint",
    )
    sam = build_empty_sam(spec, config.image_size)
    load_sam_weights(sam, path, spec)
    sha256 = file_sha256(path)
    _inject(sam, config, sha256)
    text = build_text_tower(config)
    affine = TextAffine(text.encoder.embed_dim, spec.prompt_embed_dim)
    model = SSAM(sam, affine, text.encoder, config.image_size, variant=spec.name)
    configure_trainable(model, config.method)
    model.base_info = _base_info(config, sha256, text.sha256)
    model.weights_source = (
        f"base: {describe_weights(spec, path, sha256, given is not None)}; "
        f"text encoder: {text.source}"
    )
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
        affine = TextAffine(text_dim, spec.prompt_embed_dim)
        model = SSAM(sam, affine, None, config.image_size, variant=spec.name)
    configure_trainable(model, config.method)
    model.base_info = _base_info(config, None, None)
    return model


def _base_info(config: ModelConfig, sha256: str | None, text_sha: str | None) -> BaseInfo:
    return BaseInfo(
        variant=config.variant,
        image_size=config.image_size,
        method=config.method,
        text_encoder=config.text_encoder,
        svd_targets=tuple(svd_targets(config)),
        base_sha256=sha256,
        text_sha256=text_sha,
        lora_rank=config.lora_rank if get_method(config.method).inject == "lora" else None,
    )


def count_sam_parameters(variant: str) -> int:
    """Parameters of the base ``variant`` at its own pretraining size (the paper's base)."""
    spec = get_sam_spec(variant)
    with torch.device("meta"):
        sam = build_sam(spec)
    return sum(p.numel() for p in sam.parameters())
