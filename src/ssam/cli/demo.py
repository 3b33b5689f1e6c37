"""``ssam demo``: train, evaluate and predict end to end, offline, in minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from ssam.cli.choices import Variant
from ssam.errors import ConfigError


def demo_entry(
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        "-o",
        help="run folder, default runs/demo (a previous demo there is replaced)",
    ),
    old_output: Path | None = typer.Option(None, "--output", hidden=True),
    quick: bool = typer.Option(False, help="a seconds-long smoke run (tiny sizes)"),
    data: Path | None = typer.Option(None, help="your dataset instead of phantoms"),
    label: list[str] | None = typer.Option(
        None, "--label", "-l", help="label name for --data (one; folder layout: required)"
    ),
    model: Variant = typer.Option("litemedsam", help="base model (default: LiteMedSAM, offline)"),
    sam_checkpoint: Path | None = typer.Option(
        None, help="base checkpoint of --model (LiteMedSAM needs none: it is installed)"
    ),
    clip_checkpoint: Path | None = typer.Option(
        None, help="CLIP ViT-B/32 weights (none: a random text tower, and the demo says so)"
    ),
    image_size: int | None = typer.Option(
        None, min=16, help="model input size S (default: the plan's, chosen for two CPU cores)"
    ),
    seed: int = typer.Option(0, help="seed of phantoms, initialisation and training"),
    epochs: int | None = typer.Option(None, min=1, help="S-SAM epochs (default: the plan's)"),
    val_fraction: float = typer.Option(
        0.2, min=0.01, max=0.9, help="--data: held-out share (a dataset's own split wins)"
    ),
    threads: str | None = typer.Option(None, help="torch CPU threads: a number, or auto"),
    offline: bool = typer.Option(
        True, "--offline", help="never download weights (the demo never does; accepted alike)"
    ),
) -> None:
    """Show S-SAM working end to end, offline: data, training, metrics, predictions."""
    from ssam.cli.common import check_files, parse_labels, parse_threads, pick_output_dir
    from ssam.demo import DemoOptions, run_demo

    output_dir = pick_output_dir(output_dir, old_output) or Path("runs/demo")
    labels = parse_labels(label)
    if labels is not None and len(labels) > 1:
        raise ConfigError(
            f"the demo trains on one label: give one --label, not {', '.join(labels)}"
        )
    one_label = labels[0] if labels else None
    check_files(sam_checkpoint=sam_checkpoint, clip_checkpoint=clip_checkpoint)

    options = DemoOptions(
        output_dir=output_dir, quick=quick, seed=seed, data=data, label=one_label,
        variant=model, sam_checkpoint=sam_checkpoint, clip_checkpoint=clip_checkpoint,
        image_size=image_size, epochs=epochs, val_fraction=val_fraction,
        threads=parse_threads(threads) or "auto",
    )  # fmt: skip
    result = run_demo(options, say=typer.echo)
    typer.echo("")
    typer.echo(result.weights)
    typer.echo(
        f"held-out Dice by label name (input {result.plan['image_size']} px); "
        "box reference: the base prompted with each ground-truth box"
    )
    typer.echo(f"  {'label':<12} {'untrained':>9} {'S-SAM':>7} {'box ref.':>9}")
    for label in result.labels:
        before = result.dice_untrained.get(label, float("nan"))
        after = result.dice_trained.get(label, float("nan"))
        box = result.dice_box.get(label, float("nan"))
        typer.echo(f"  {label:<12} {before:9.3f} {after:7.3f} {box:9.3f}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    typer.echo(f"time: {times}; peak memory {result.peak_rss_mib:.0f} MiB")
    typer.echo(f"run folder: {result.output_dir}")
    for name, path in result.files.items():
        typer.echo(f"  {name:<15} {path}")
    typer.echo(
        "\nOn your data (LiteMedSAM offline; add --clip-checkpoint ViT-B-32.pt for real CLIP):\n"
        "  ssam train --data YOUR_DATA --label NAME\n"
        "  (or ssam demo --data YOUR_DATA --label NAME)"
    )
