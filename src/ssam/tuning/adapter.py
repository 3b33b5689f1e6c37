"""Adapter files (DESIGN.md 8): the trainable tensors alone plus a JSON config, in safetensors.

The config records the base model (variant, SHA-256 of the base checkpoint, input size, method,
text encoder) and the label names; loading refuses an adapter whose base does not match.
About 1.8 MB for ViT-B at 256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ssam.atomic import atomic_path
from ssam.errors import AdapterError, summarise_validation
from ssam.sam.checkpoint import check_state_keys

FORMAT = "ssam-adapter"
VERSION = 1
META_KEY = "ssam"  # safetensors metadata key of the JSON config (adapters, merged companions)
# Base properties that must agree between an adapter and the model it is loaded on.
_MUST_MATCH = ("variant", "image_size", "method", "text_encoder", "base_sha256", "text_sha256")


class AdapterConfigSchema(BaseModel):
    """What an adapter's JSON config must hold, checked on read so that a crafted or damaged
    file is one line naming the key, not a traceback deep in model building. Keys added by
    later versions (``extra``) are kept and passed on."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: str
    version: int = Field(ge=1)
    variant: str
    image_size: int = Field(ge=16, le=4096)
    method: str
    text_encoder: str
    svd_targets: list[str] = []
    base_sha256: str | None = None
    text_sha256: str | None = None
    lora_rank: int | None = Field(default=None, ge=1)
    labels: list[str] = []
    intensity: dict | None = None
    input_stats: dict | None = None


def validate_adapter_config(config: object, path: str | Path) -> dict:
    """``config`` checked against ``AdapterConfigSchema``; AdapterError naming the file and
    every bad key otherwise."""
    if not isinstance(config, dict):
        raise AdapterError(
            f"{path}: the adapter config must be a JSON object, not a {type(config).__name__}"
        )
    try:
        AdapterConfigSchema.model_validate(config)
    except ValidationError as err:
        raise AdapterError(f"{path}: bad adapter config: {summarise_validation(err)}") from None
    return config


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus the running statistics of modules that own trainable
    parameters (the text-affine BatchNorm), detached on the CPU."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    owners = {n.rpartition(".")[0] for n in state}
    for name, buf in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        if owner in owners and leaf in ("running_mean", "running_var", "num_batches_tracked"):
            state[name] = buf
    return {
        k: v.detach() if v.is_meta else v.detach().cpu().contiguous()
        for k, v in sorted(state.items())
    }


def build_adapter_config(model: nn.Module, labels: Sequence[str] = (), **extra) -> dict:
    info = getattr(model, "base_info", None)
    if info is None:
        raise AdapterError("the model carries no base_info; build it with ssam.create_model")
    return {"format": FORMAT, "version": VERSION, **info.to_dict(), "labels": list(labels), **extra}


def save_adapter(model: nn.Module, path: str | Path, labels: Sequence[str] = (), **extra) -> Path:
    """Write the adapter of ``model`` to ``path`` (.safetensors) atomically."""
    path = Path(path)
    config = build_adapter_config(model, labels, **extra)
    with atomic_path(path) as tmp:
        save_file(adapter_state_dict(model), tmp, metadata={META_KEY: json.dumps(config)})
    return path


def read_tagged_safetensors(
    path: str | Path, fmt: str, error: type[Exception], what: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of a safetensors file whose metadata holds a JSON config (under
    ``"ssam"``) with ``"format": fmt``; otherwise ``error`` naming the file and ``what`` it
    should have been."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise error(f"{path}: not a readable {what} (safetensors) file: {err}") from None
    try:
        config = json.loads(meta[META_KEY])
    except (KeyError, ValueError):
        raise error(f"{path}: safetensors file without an S-SAM {what} config") from None
    if not isinstance(config, dict):
        raise error(
            f"{path}: the {what} config must be a JSON object, not a {type(config).__name__}"
        )
    if config.get("format") != fmt:
        raise error(f"{path}: format {config.get('format')!r} is not {fmt!r}")
    return tensors, config


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of an adapter file, its config checked (``AdapterConfigSchema``);
    AdapterError if it is not one."""
    tensors, config = read_tagged_safetensors(path, FORMAT, AdapterError, "adapter")
    return tensors, validate_adapter_config(config, path)


def check_adapter_base(config: dict, model: nn.Module, path: str | Path) -> None:
    """Refuse an adapter trained on another base, naming each property that differs."""
    base = model.base_info.to_dict()
    diffs = [
        f"{key}: adapter {config.get(key)!r}, model {base[key]!r}"
        for key in _MUST_MATCH
        if config.get(key) != base[key]
    ]
    if diffs:
        raise AdapterError(
            f"{path}: adapter was trained on another base model ({'; '.join(diffs)}); "
            "load it on the base checkpoint and settings it was trained with"
        )


def load_adapter(model: nn.Module, path: str | Path) -> dict:
    """Load the adapter at ``path`` into ``model`` in place; returns its config."""
    tensors, config = read_adapter(path)
    check_adapter_base(config, model, path)
    expected = adapter_state_dict(model)
    check_state_keys(tensors, expected, path, "tensors do not fit the model", AdapterError)
    wrong = [k for k in tensors if tensors[k].shape != expected[k].shape]
    if wrong:
        raise AdapterError(
            f"{path}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, the model "
            f"expects {tuple(expected[wrong[0]].shape)}"
        )
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in tensors.items():
            target = params.get(key, buffers.get(key))
            target.copy_(value.to(target.device, target.dtype))
    return config
