"""Option handling shared by the commands that read a training config."""

from __future__ import annotations

from pathlib import Path

from ssam.config.train import TrainConfig, load_train_config


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
    **fields,
) -> TrainConfig:
    """The training config from a YAML file and/or --data/--label, then --set overrides."""
    if data is not None:
        overrides = quick_dataset_overrides(data, label) + list(overrides)
    fields["model.sam_checkpoint"] = sam_checkpoint and str(sam_checkpoint)
    fields["model.clip_checkpoint"] = clip_checkpoint and str(clip_checkpoint)
    return load_train_config(config, list(overrides), **fields)
