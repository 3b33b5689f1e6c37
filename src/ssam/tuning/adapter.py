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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ssam.atomic import atomic_path
from ssam.errors import AdapterError
from ssam.sam.checkpoint import check_state_keys

FORMAT = "ssam-adapter"
VERSION = 1
META_KEY = "ssam"  # safetensors metadata key of the JSON config (adapters, merged companions)
# Base properties that must agree between an adapter and the model it is loaded on.
_MUST_MATCH = ("variant", "image_size", "method", "text_encoder", "base_sha256", "text_sha256")


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
    if config.get("format") != fmt:
        raise error(f"{path}: format {config.get('format')!r} is not {fmt!r}")
    return tensors, config


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of an adapter file; AdapterError if it is not one."""
    return read_tagged_safetensors(path, FORMAT, AdapterError, "adapter")


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
