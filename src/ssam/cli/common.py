"""Option handling shared by the commands: training configs, and loading a model to predict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ssam.errors import ConfigError

if TYPE_CHECKING:
    from ssam.config.data import IntensityConfig
    from ssam.config.train import TrainConfig
    from ssam.inference.predictor import SSAMPredictor


def quick_dataset_overrides(data: Path, label: str | None) -> list[str]:
    """Overrides describing one dataset given by --data/--label (layout detected)."""
    layout = "nnunet" if (data / "dataset.json").is_file() else "folder"
    overrides = [f"datasets=[{{path: '{data.resolve()}', layout: {layout}}}]"]
    if label is not None:
        value = label if layout == "folder" else f"[{label}]"
        overrides.append(f"datasets.0.{'label' if layout == 'folder' else 'labels'}={value}")
    return overrides


def build_config(
    config: Path | None,
    data: Path | None,
    label: str | None,
    overrides: list[str],
    sam_checkpoint: Path | None = None,
    clip_checkpoint: Path | None = None,
    base: Path | None = None,
    **fields,
) -> TrainConfig:
    """The training config from a YAML file and/or --data/--label, then --set overrides;
    ``base``: a finished demo run whose small SAM is the base model (``ssam.demo.base``)."""
    from ssam.config.train import load_train_config

    if base is not None:
        from ssam.demo.base import base_overrides

        overrides = base_overrides(base, _sets_lr(config, overrides)) + list(overrides)
    if data is not None:
        overrides = quick_dataset_overrides(data, label) + list(overrides)
    fields["model.sam_checkpoint"] = sam_checkpoint and str(sam_checkpoint.resolve())
    fields["model.clip_checkpoint"] = clip_checkpoint and str(clip_checkpoint.resolve())
    return load_train_config(config, list(overrides), **fields)


def _sets_lr(config: Path | None, overrides: list[str]) -> bool:
    """Whether the YAML config or an override sets the learning rate."""
    import yaml

    if any(item.strip().startswith("optim.lr=") for item in overrides):
        return True
    try:
        tree = yaml.safe_load(config.read_text()) if config is not None else None
    except (OSError, yaml.YAMLError):
        return False  # load_train_config reports the unreadable file
    return isinstance(tree, dict) and "lr" in (tree.get("optim") or {})


def parse_threads(value: str | None) -> int | str | None:
    """``--threads`` -> a positive int, "auto", or None (not given); ConfigError otherwise."""
    if value is None or value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"--threads takes a number of at least 1 or 'auto', not {value!r}")
    return count


def use_threads(value: str | int | None) -> None:
    """Apply ``--threads`` (None: auto) to torch and say what was chosen, on stderr."""
    import sys

    from ssam.threads import apply_threads

    requested = parse_threads(value) if isinstance(value, str) else value
    print(apply_threads(requested)[1], file=sys.stderr)


def build_intensity(
    preset: str, level: float | None, width: float | None
) -> IntensityConfig | None:
    """``auto`` -> None (chosen per input); else the preset, with a CT window if given."""
    from ssam.config.data import IntensityConfig

    if preset == "auto":
        if level is not None or width is not None:
            raise ConfigError("--window-level/--window-width need --intensity ct")
        return None
    return IntensityConfig(preset=preset, window_level=level, window_width=width)


def load_predictor(
    adapter: Path | None,
    merged: Path | None,
    sam_checkpoint: Path | None,
    clip_checkpoint: Path | None,
    device: str,
    allow_download: bool,
    **kwargs,
) -> SSAMPredictor:
    """A predictor from an adapter (plus base files) or from a merged checkpoint."""
    from ssam.inference.predictor import SSAMPredictor

    if (adapter is None) == (merged is None):
        raise ConfigError("give exactly one of --adapter and --merged")
    if merged is not None:
        return SSAMPredictor.from_merged(merged, None, clip_checkpoint, device, **kwargs)
    return SSAMPredictor.from_adapter(
        adapter, sam_checkpoint, clip_checkpoint, device, allow_download, **kwargs
    )


def load_option_predictor(
    adapter: Path | None,
    merged: Path | None,
    sam_checkpoint: Path | None,
    clip_checkpoint: Path | None,
    device: str,
    offline: bool,
    intensity: str,
    batch_size: int,
    window: tuple[float | None, float | None] = (None, None),
) -> SSAMPredictor:
    """The predictor that --adapter/--merged, --offline, --intensity (with a CT ``window`` of
    level and width) and --batch-size describe: the model of ``ssam predict`` and ``serve``."""
    return load_predictor(
        adapter,
        merged,
        sam_checkpoint,
        clip_checkpoint,
        device,
        not offline,
        intensity=build_intensity(intensity, *window),
        batch_size=batch_size,
    )
