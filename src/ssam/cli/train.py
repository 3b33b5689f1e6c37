"""``ssam train``: train an adapter from a YAML config (and/or flags) into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ssam.config.train import load_train_config
from ssam.train import train


def _quick_dataset(data: Path, label: str | None) -> list[str]:
    """Overrides describing one dataset given by --data/--label (layout detected)."""
    layout = "nnunet" if (data / "dataset.json").is_file() else "folder"
    overrides = [f"datasets=[{{path: '{data.resolve()}', layout: {layout}}}]"]
    if label is not None:
        key = "label" if layout == "folder" else "labels"
        overrides.append(f"datasets.0.{key}={label if layout == 'folder' else [label]}")
    return overrides


def train_entry(
    config: Path | None = typer.Argument(None, help="YAML training config (see configs/)"),
    data: Path | None = typer.Option(None, help="one dataset folder, instead of a config's list"),
    label: str | None = typer.Option(None, help="label name for --data (folder layout: required)"),
    output_dir: Path | None = typer.Option(None, help="run folder"),
    epochs: int | None = typer.Option(None, help="number of epochs"),
    max_steps: int | None = typer.Option(None, help="stop after this many optimiser steps"),
    batch_size: int | None = typer.Option(None, help="batch size per process"),
    sam_checkpoint: Path | None = typer.Option(None, help="SAM base checkpoint"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights"),
    resume: bool = typer.Option(False, help="continue the run saved in the output folder"),
    set_: list[str] = typer.Option([], "--set", help="override any setting: key=value"),
) -> None:
    """Train S-SAM on your data; writes adapters, logs and a resumable state."""
    overrides = list(set_)
    if data is not None:
        overrides = _quick_dataset(data, label) + overrides
    cfg = load_train_config(
        config,
        overrides,
        output_dir=output_dir and str(output_dir),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        **{
            "model.sam_checkpoint": sam_checkpoint and str(sam_checkpoint),
            "model.clip_checkpoint": clip_checkpoint and str(clip_checkpoint),
        },
    )
    result = train(cfg, resume=resume)
    console = Console()
    console.print(f"run folder: {result.run_dir}")
    console.print(f"last adapter: {result.last_adapter}")
    if result.best_adapter is not None:
        p = result.progress
        console.print(
            f"best adapter: {result.best_adapter} (val Dice {p.best_score:.4f}, epoch {p.best_epoch + 1})"
        )
