"""Training configuration: one validated schema, read from YAML with command-line overrides.

Defaults are the paper's recipe (DESIGN.md 6): focal (alpha 0.75, gamma 3) + soft Dice (smooth
1), AdamW lr 1e-4, weight decay 1e-2, StepLR every 200 epochs x0.2, batch 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssam.config.data import DatasetConfig
from ssam.config.model import ModelConfig
from ssam.errors import ConfigError, describe_problem
from ssam.sam.families import get_family
from ssam.tuning.methods import get_method


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    focal_alpha: float = Field(0.75, ge=0.0, le=1.0)
    focal_gamma: float = Field(3.0, ge=0.0)
    dice_smooth: float = Field(1.0, gt=0.0)
    focal_weight: float = Field(1.0, ge=0.0)
    dice_weight: float = Field(1.0, ge=0.0)
    svd_regulariser: float = Field(0.0, ge=0.0, description="lambda of ||1-a|| + ||b||")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    step_size: int = Field(200, ge=1, description="StepLR period, in epochs")
    gamma: float = Field(0.2, gt=0.0, le=1.0, description="StepLR factor")
    grad_clip: float | None = Field(None, gt=0.0)


class TrainConfig(BaseModel):
    """Everything a training run needs; the run folder keeps a copy (``config.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = ModelConfig()
    datasets: list[DatasetConfig] = Field(min_length=1)
    output_dir: Path = Path("runs/ssam")
    epochs: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(32, ge=1)
    micro_batch_size: int | Literal["auto"] = Field(
        "auto",
        description="images per forward/backward pass; a batch is split into such chunks with "
        "the gradients of one pass (auto: as many as fit the activation-memory budget)",
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute the encoder's full-resolution stages in the backward pass "
        "instead of keeping their activations (LiteMedSAM: 40 % less memory per image)",
    )
    cache_embeddings: bool | Literal["auto"] = Field(
        "auto",
        description="methods that leave the image encoder frozen (decoder, token) train on "
        "image embeddings computed once per image and kept in the run folder; training images "
        "are then not augmented (auto: on for such methods; false: encode every step, with "
        "augmentation)",
    )
    embeddings_dir: Path | None = Field(
        None,
        description="where cached embeddings are kept (default: the run folder's embeddings/); "
        "runs sharing it reuse each other's when weights, size and samples agree",
    )
    grad_accumulation: int = Field(1, ge=1)
    samples_per_epoch: int | None = Field(
        None, ge=1, description="draws per epoch when sampling by dataset weight (default: all)"
    )
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    val_at_start: bool = Field(True, description="validate the untrained model first (epoch -1)")
    checkpoint_every: int = Field(
        50, ge=1, description="also save the resumable state every N steps"
    )
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    threads: int | Literal["auto"] = Field(
        "auto", description="torch CPU threads; auto: the CPUs not busy at start"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    tensorboard: bool = True
    progress: bool = True  # bars on a terminal; a log file or pipe gets a line per epoch

    @model_validator(mode="after")
    def _checkpointing_offered(self) -> TrainConfig:
        family = get_family(self.model.variant)
        if self.activation_checkpointing and family.checkpointed_bytes_per_pixel is None:
            raise ValueError(
                f"activation_checkpointing is offered for LiteMedSAM's TinyViT, not for "
                f"{self.model.variant}'s {family.name} encoder"
            )
        return self

    @model_validator(mode="after")
    def _cache_needs_frozen_encoder(self) -> TrainConfig:
        if self.cache_embeddings is True and get_method(self.model.method).trains_encoder:
            raise ValueError(
                f"cache_embeddings needs a method that leaves the image encoder frozen "
                f"(decoder, token); {self.model.method} trains it"
            )
        return self

    @property
    def embeddings_cached(self) -> bool:
        """Whether training runs on embeddings computed once per image (``cache_embeddings``)."""
        if self.cache_embeddings == "auto":
            return not get_method(self.model.method).trains_encoder
        return self.cache_embeddings

    @model_validator(mode="after")
    def _positive_micro_batch(self) -> TrainConfig:
        if isinstance(self.micro_batch_size, int) and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be at least 1, got {self.micro_batch_size}")
        return self

    @model_validator(mode="after")
    def _positive_threads(self) -> TrainConfig:
        if isinstance(self.threads, int) and self.threads < 1:
            raise ValueError(f"threads must be at least 1 or 'auto', got {self.threads}")
        return self

    @model_validator(mode="after")
    def _unique_dataset_names(self) -> TrainConfig:
        names = [d.dataset_name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(
                f"dataset names must be unique, got {names}; set `name:` to tell them apart"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b]...`` for ``dotted`` = "a.b..."; list entries by index ("datasets.0.x").
    A wrong index or a key where a list is: ConfigError naming the key and what is allowed."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys):
        here = ".".join(keys[:depth]) or "the config"
        last = depth == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, key, dotted, here, keys[depth:])
            if last:
                node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
                return
            node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted!r}: {here} is a value, not a section")


def _list_index(items: list, key: str, dotted: str, where: str, keys: list[str]) -> int:
    """The list index ``key`` of ``items`` (at ``where``; ``keys``: the override's keys from
    ``key`` on), or a ConfigError saying which indices exist."""
    n = len(items)
    valid = f"0 to {n - 1}" if n > 1 else "0" if n == 1 else "none yet"
    numeric = key.lstrip("-").isdigit()
    rest = ".".join(keys[1:] if numeric else keys) or "KEY"
    example = f"{where}.0.{rest}"
    if not key.isdigit() and not numeric:
        raise ConfigError(
            f"override {dotted!r}: {where} is a list of {n} (indices {valid}); "
            f"name an entry, e.g. {example}"
        )
    if not 0 <= int(key) < n:
        raise ConfigError(
            f"override {dotted!r}: {where} has {n} entr{'y' if n == 1 else 'ies'} "
            f"(indices {valid}); e.g. {example}"
        )
    return int(key)


def _fields_at(loc: tuple) -> list[str] | None:
    """Field names of the config section at ``loc`` (list indices skipped), or None."""
    model: Any = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if hasattr(a, "model_fields")), None)
        if model is None:
            return None
    return sorted(getattr(model, "model_fields", {}))


def describe_config_errors(err: ValidationError, source: str) -> str:
    """A ``TrainConfig`` validation error as one line: each bad key with what is allowed."""
    parts = []
    for problem in err.errors():
        loc = tuple(problem.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "the config"
        if problem.get("type") == "extra_forbidden":
            allowed = _fields_at(loc[:-1]) or []
            hint = f"allowed here: {', '.join(allowed)}"
            if len(loc) == 1 and loc[0] in DatasetConfig.model_fields:
                hint = f"{loc[0]!r} is a dataset setting: use datasets.N.{loc[0]} (N from 0)"
            parts.append(f"unknown key {key} ({hint})")
        else:
            parts.append(describe_problem(problem))
    return f"{source}: " + "; ".join(parts)


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=3e-4", "epochs=5"]`` -> [(key, YAML-parsed value), ...]."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        pairs.append((key.strip(), yaml.safe_load(raw)))
    return pairs


def load_train_config(
    path: str | Path | None, overrides: list[str] | None = None, **fields: Any
) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file, then ``key=value`` overrides, then ``fields``.

    Relative dataset and checkpoint paths in the file are taken relative to the file's folder.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the config ({err})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a config must be a mapping of settings")
        _resolve_paths(tree, path.parent)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    for key, value in fields.items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        source = str(path) if path is not None else "settings"
        raise ConfigError(describe_config_errors(err, source)) from None


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    for entry in tree.get("datasets") or []:
        if isinstance(entry, dict) and "path" in entry:
            entry["path"] = str((base / entry["path"]).resolve())
    model = tree.get("model") or {}
    for key in ("sam_checkpoint", "clip_checkpoint"):
        if model.get(key):
            model[key] = str((base / Path(model[key]).expanduser()).resolve())


def dump_train_config(config: TrainConfig) -> str:
    """The resolved config as YAML (paths as strings), for the run folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
