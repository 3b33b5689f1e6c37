"""``ssam train``: train an adapter from a YAML config (and/or flags) into a run folder."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ssam.cli.choices import Method
from ssam.cli.common import label_list_option


def train_entry(
    config: Path | None = typer.Argument(None, help="YAML training config (see configs/)"),
    data: Path | None = typer.Option(None, help="one dataset folder, instead of a config's list"),
    label: list[str] | None = label_list_option(),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="run folder"),
    old_output: Path | None = typer.Option(None, "--output", hidden=True),
    epochs: int | None = typer.Option(None, help="number of epochs"),
    max_steps: int | None = typer.Option(None, help="stop after this many optimiser steps"),
    batch_size: int | None = typer.Option(None, help="batch size per process"),
    method: Method | None = typer.Option(
        None,
        help="what trains (default ssam); decoder and token leave the image encoder frozen and "
        "train on embeddings computed once per image",
    ),
    sam_checkpoint: Path | None = typer.Option(
        None, help="base checkpoint (default: LiteMedSAM, installed with S-SAM)"
    ),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights"),
    base: Path | None = typer.Option(None, hidden=True),  # retired: one line says so
    resume: bool = typer.Option(False, help="continue the run saved in the output folder"),
    offline: bool = typer.Option(False, help="never download weights"),
    threads: str | None = typer.Option(
        None, help="torch CPU threads: a number, or auto (default: the config's, auto)"
    ),
    set_: list[str] = typer.Option([], "--set", help="override any setting: key=value"),
) -> None:
    """Train S-SAM on your data; writes adapters, logs and a resumable state."""
    from ssam.cli.common import build_config, parse_labels, parse_threads, pick_output_dir
    from ssam.train import train

    output_dir = pick_output_dir(output_dir, old_output)
    cfg = build_config(
        config,
        data,
        parse_labels(label),
        set_,
        sam_checkpoint,
        clip_checkpoint,
        base,
        offline,
        output_dir=output_dir and str(output_dir),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        threads=parse_threads(threads),
        **{"model.method": method},
    )
    result = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    console = Console()
    console.print(f"run folder: {result.run_dir}")
    console.print(f"last adapter: {result.last_adapter}")
    if (result.run_dir / "learning_curve.png").is_file():
        console.print(f"learning curve: {result.run_dir / 'learning_curve.png'}")
    if result.best_adapter is not None:
        p = result.progress
        console.print(
            f"best adapter: {result.best_adapter} "
            f"(validation Dice {p.best_score:.4f}, epoch {p.best_epoch + 1})"
        )
