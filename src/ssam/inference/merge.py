"""Merged models (DESIGN.md 8): the adapter folded into plain SAM weights, plus a companion.

Two files:

* ``NAME.pth``: a plain state dict in the base's key layout (``image_encoder.*``,
  ``prompt_encoder.*``, ``mask_decoder.*``; ``torch.save`` of a dict of tensors). For SAM ViT
  at input size 1024 it loads into ``segment_anything``'s own ``sam_model_registry`` builder.
  At any other size S the ViT's ``pos_embed`` is (1, S/16, S/16, C) and its relative-position
  tables have the lengths of S's windows, so the file records S in its shapes: the official
  builder (always 1024) refuses it, and ``load_merged`` rebuilds the encoder at S (windows
  from ``compute_window_size``) and checks the grid against the companion's ``image_size``.
  A merged LiteMedSAM has LiteMedSAM's key layout and shapes at any S (TinyViT's weights do
  not depend on S); the companion's ``image_size`` says which S it was trained at.
* ``NAME.ssam.safetensors`` (the companion): the text-affine layer's tensors, the CLIP
  features of the trained labels (``label_features``, (N, 512) float32, row i = label i) and
  a JSON config (format, variant, image_size, encoder grid, text encoder, labels, SHA-256 of
  the merged checkpoint, of the original base and of the adapter).

``load_merged`` builds a runnable ``SSAM`` from the pair: no SVD layers, and no CLIP for the
trained labels (other label names need the CLIP weights: ``clip_checkpoint=``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ssam.atomic import atomic_path
from ssam.errors import CheckpointError, ConfigError
from ssam.factory import BaseInfo, build_text_tower
from ssam.inference.loading import load_adapted_model, model_config_from_adapter
from ssam.model import SSAM
from ssam.sam.build import build_empty_sam
from ssam.sam.checkpoint import load_sam_weights, read_state_dict, save_state_dict
from ssam.sam.families import get_family
from ssam.sam.variants import get_sam_spec
from ssam.text import TextAffine, TextEncoder, normalise_label
from ssam.tuning.adapter import META_KEY, read_tagged_safetensors
from ssam.tuning.lora import merge_lora
from ssam.tuning.methods import get_method
from ssam.tuning.svd import merge_svd
from ssam.weights import file_sha256

MERGED_FORMAT = "ssam-merged"
MERGED_VERSION = 1
COMPANION_SUFFIX = ".ssam.safetensors"
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_FEATURES_KEY = "label_features"

# Method.inject -> function folding that injection into plain layers, in place.
MERGERS: dict[str, Callable[[nn.Module], nn.Module]] = {"svd": merge_svd, "lora": merge_lora}


class LabelFeatureTable(nn.Module):
    """Stands in for the CLIP text encoder: stored features by label name, (N, D) float32.

    Names not in the table go to ``fallback`` (a real ``TextEncoder``) if there is one, else
    a ``ConfigError`` names them.
    """

    def __init__(
        self, labels: Sequence[str], features: torch.Tensor, fallback: TextEncoder | None = None
    ) -> None:
        super().__init__()
        if features.dim() != 2 or features.shape[0] != len(labels):
            raise ValueError(
                f"{len(labels)} labels need features (N, D) with N = {len(labels)}, "
                f"got {tuple(features.shape)}"
            )
        self.labels = [normalise_label(n) for n in labels]
        self.register_buffer("features", features.detach().float().clone())
        self.fallback = fallback

    @property
    def embed_dim(self) -> int:
        return int(self.features.shape[1])

    def cached_labels(self) -> list[str]:
        return list(self.labels)

    def encode(self, names: Sequence[str], device: torch.device | str | None = None):
        """(N,) names -> (N, D) float32 features; unknown names from the fallback encoder."""
        keys = [normalise_label(n) for n in names]
        unknown = [k for k in dict.fromkeys(keys) if k not in self.labels]
        if unknown and self.fallback is None:
            raise ConfigError(
                f"label(s) {unknown} are not stored in the merged model (it knows "
                f"{self.labels}); pass the CLIP weights (clip_checkpoint / --clip-checkpoint) "
                "to prompt with other names"
            )
        extra = dict(zip(unknown, self.fallback.encode(unknown), strict=True)) if unknown else {}
        rows = [
            self.features[self.labels.index(k)] if k in self.labels else extra[k].to(self.features)
            for k in keys
        ]
        out = torch.stack(rows)
        return out.to(device) if device is not None else out


def merge_adapted_weights(model: SSAM) -> SSAM:
    """Fold the method's injected layers into plain SAM layers, in place; returns ``model``.

    For methods without an injection (SAM's own parameters train) there is nothing to fold.
    """
    method = get_method(model.base_info.method)
    if method.inject is not None:
        MERGERS[method.inject](model)
    return model


def merged_sam_state_dict(model: SSAM) -> dict[str, torch.Tensor]:
    """The official-layout SAM tensors of a merged model (no adapter or text keys)."""
    state = {k: v for k, v in model.state_dict().items() if k.startswith(SAM_PREFIXES)}
    leftovers = [k for k in state if ".svd_" in k or ".lora_" in k or ".base_layer." in k]
    if leftovers:
        raise ValueError(f"model is not merged: found adapter tensors {leftovers[:3]}")
    return state


def companion_path(checkpoint: Path | str) -> Path:
    """``NAME.pth`` -> ``NAME.ssam.safetensors`` beside it."""
    return Path(checkpoint).with_suffix(COMPANION_SUFFIX)


@dataclass(frozen=True)
class MergedFiles:
    checkpoint: Path
    companion: Path
    weights_source: str = ""  # the merged model's base and text encoder, in a line


def save_merged(
    model: SSAM, checkpoint: Path | str, labels: Sequence[str], **extra: object
) -> MergedFiles:
    """Merge ``model`` in place and write the official-layout checkpoint and its companion.

    ``labels`` are the names whose CLIP features are stored (the adapter's trained labels);
    ``extra`` goes into the companion's JSON config.
    """
    labels = [normalise_label(n) for n in labels]
    width = model.text_affine.linear.in_features
    features = model.text_features(labels) if labels else torch.zeros(0, width)
    merge_adapted_weights(model)
    checkpoint = save_state_dict(merged_sam_state_dict(model), checkpoint)
    info = model.base_info
    config = {
        "format": MERGED_FORMAT,
        "version": MERGED_VERSION,
        "variant": info.variant,
        "image_size": model.image_size,
        "encoder_grid": get_family(info.variant).grid(get_sam_spec(info.variant), model.image_size),
        "method": info.method,
        "text_encoder": info.text_encoder,
        "labels": labels,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "base_sha256": info.base_sha256,
        "text_sha256": info.text_sha256,
        **extra,
    }
    tensors = {f"text_affine.{k}": v for k, v in model.text_affine.state_dict().items()}
    tensors[_FEATURES_KEY] = features
    companion = companion_path(checkpoint)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(companion) as tmp:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(config)})
    return MergedFiles(checkpoint, companion, getattr(model, "weights_source", ""))


def merge_adapter(
    adapter: Path | str,
    output: Path | str,
    sam_checkpoint: Path | str | None = None,
    clip_checkpoint: Path | str | None = None,
    allow_download: bool = False,
) -> MergedFiles:
    """Base + adapter -> merged checkpoint ``output`` (.pth) and its companion."""
    if sam_checkpoint is not None and Path(output).resolve() == Path(sam_checkpoint).resolve():
        raise ConfigError(f"{output}: the merged checkpoint would overwrite its base")
    model, adapter_config = load_adapted_model(
        adapter, sam_checkpoint, clip_checkpoint, allow_download=allow_download
    )
    return save_merged(
        model,
        output,
        adapter_config.get("labels", []),
        adapter_sha256=file_sha256(adapter),
    )


def read_companion(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of a companion file; ``CheckpointError`` if it is not one."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: companion file of the merged model not found")
    return read_tagged_safetensors(path, MERGED_FORMAT, CheckpointError, "merged-model companion")


def _check_grid(state: dict[str, torch.Tensor], config: dict, path: Path) -> None:
    """A ViT's positional table must have the companion's grid (TinyViT has none to check)."""
    spec = get_sam_spec(config["variant"])
    family = get_family(spec)
    if "pos_embed" not in family.position_tables:
        return
    pos = state.get("image_encoder.pos_embed")
    grid = None if pos is None else int(pos.shape[1])
    expected = family.grid(spec, config["image_size"])
    if grid != expected:
        raise CheckpointError(
            f"{path}: positional embedding grid {grid} does not fit the companion's image size "
            f"{config['image_size']} (grid {expected}); is this the checkpoint it was saved with?"
        )


def _build_text_fallback(config: dict, clip_checkpoint: Path | str | None) -> TextEncoder:
    model_config = model_config_from_adapter(config, clip_checkpoint=clip_checkpoint)
    # create_model's text part alone: the same seeded tower for random ones, CLIP otherwise.
    text = build_text_tower(model_config)
    if config.get("text_sha256") and text.sha256 != config["text_sha256"]:
        raise CheckpointError(
            f"{clip_checkpoint}: CLIP weights differ from those the model was trained with "
            f"(SHA-256 {text.sha256}, expected {config['text_sha256']})"
        )
    return text.encoder


def load_merged(
    checkpoint: Path | str,
    companion: Path | str | None = None,
    clip_checkpoint: Path | str | None = None,
    load_clip: bool = False,
    device: torch.device | str = "cpu",
) -> SSAM:
    """The runnable merged model (eval mode) from ``checkpoint`` and its companion.

    ``companion`` defaults to ``companion_path(checkpoint)``. The text encoder is replaced by
    the stored label features; with ``clip_checkpoint`` (or ``load_clip`` for encoders whose
    weights need no file, such as ``tiny``) other label names are encoded by CLIP as well.
    The model carries ``labels`` (the trained names) and ``base_info`` (base = the merged file).
    """
    checkpoint = Path(checkpoint)
    tensors, config = read_companion(companion or companion_path(checkpoint))
    spec = get_sam_spec(config["variant"])
    state = read_state_dict(checkpoint)
    _check_grid(state, config, checkpoint)
    sha256 = file_sha256(checkpoint)
    if config.get("checkpoint_sha256") not in (None, sha256):
        raise CheckpointError(
            f"{checkpoint}: SHA-256 {sha256} is not that of the checkpoint the companion was "
            f"saved with ({config['checkpoint_sha256']}); keep the two files together"
        )
    sam = build_empty_sam(spec, config["image_size"])
    load_sam_weights(sam, checkpoint, spec, state)
    features = tensors.pop(_FEATURES_KEY)
    affine = TextAffine(tensors["text_affine.linear.weight"].shape[1], spec.prompt_embed_dim)
    affine.load_state_dict({k.removeprefix("text_affine."): v for k, v in tensors.items()})
    fallback = None
    if clip_checkpoint is not None or load_clip:
        fallback = _build_text_fallback(config, clip_checkpoint)
    table = LabelFeatureTable(config["labels"], features, fallback)
    model = SSAM(sam, affine, table, config["image_size"], variant=spec.name)
    model.labels = list(config["labels"])
    model.base_info = BaseInfo(
        variant=config["variant"],
        image_size=config["image_size"],
        method=config["method"],
        text_encoder=config["text_encoder"],
        svd_targets=(),
        base_sha256=sha256,
        text_sha256=config.get("text_sha256"),
    )
    model.weights_source = (
        f"merged {spec.label} from {checkpoint}, SHA-256 {sha256[:12]}; labels' text features "
        f"stored in {companion or companion_path(checkpoint)}"
    )
    return model.requires_grad_(False).to(device).eval()


__all__ = [
    "COMPANION_SUFFIX",
    "LabelFeatureTable",
    "MergedFiles",
    "companion_path",
    "load_merged",
    "merge_adapted_weights",
    "merge_adapter",
    "merged_sam_state_dict",
    "read_companion",
    "save_merged",
]
