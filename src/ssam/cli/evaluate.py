"""``ssam evaluate``: Dice, IoU and HD95 per case and label of an adapter (or, without one, of
the untrained base model: the baseline) on a split."""

from __future__ import annotations

from pathlib import Path

import typer

from ssam.cli.choices import BACKEND_HELP, Backend, Split
from ssam.cli.common import label_list_option


def evaluate_entry(
    config: Path | None = typer.Argument(None, help="the training config (datasets and split)"),
    adapter: Path | None = typer.Option(
        None, help="adapter file (e.g. RUN/best.safetensors); none: score the untrained model"
    ),
    split: Split = typer.Option("val", help="split to score (all: every labelled case)"),
    data: Path | None = typer.Option(None, help="one dataset folder, instead of a config"),
    label: list[str] | None = label_list_option(),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="where metrics.csv and summary.json go"
    ),
    old_output: Path | None = typer.Option(None, "--output", hidden=True),
    sam_checkpoint: Path | None = typer.Option(
        None, help="base checkpoint (default: LiteMedSAM, installed with S-SAM)"
    ),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights"),
    base: Path | None = typer.Option(None, hidden=True),  # retired: one line says so
    batch_size: int = typer.Option(8, help="slices per encoder call"),
    offline: bool = typer.Option(False, help="never download weights"),
    threads: str | None = typer.Option(
        None, help="torch CPU threads: a number, or auto (default: the config's, auto)"
    ),
    set_: list[str] = typer.Option([], "--set", help="override any setting: key=value"),
    backend: Backend = typer.Option("torch", help=BACKEND_HELP),
) -> None:
    """Score an adapter at the original resolution (volumes as volumes, HD95 in mm)."""
    from ssam.cli.common import (
        build_config,
        check_files,
        parse_labels,
        pick_output_dir,
        use_threads,
    )
    from ssam.evaluation.evaluate import UNTRAINED, evaluate
    from ssam.evaluation.metrics import EMPTY_GT_POLICY

    output_dir = pick_output_dir(output_dir, old_output)
    check_files(adapter=adapter)
    cfg = build_config(
        config, data, parse_labels(label), set_, sam_checkpoint, clip_checkpoint, base, offline
    )
    typer.echo(use_threads(threads if threads is not None else cfg.threads), err=True)
    if adapter is None:
        typer.echo(f"no --adapter: scoring the {UNTRAINED}, a baseline", err=True)
    result = evaluate(
        cfg,
        adapter,
        split,  # type: ignore[arg-type]
        output_dir,
        batch_size,
        progress=cfg.progress,
        backend=backend,
        say=lambda line: typer.echo(line, err=True),
    )
    for name, how in result.table.context["splits"].items():
        typer.echo(f"{split} split of {name}: {how}", err=True)
    for case_id, notes in result.table.context.get("warnings", {}).items():
        for note in notes:
            typer.echo(f"WARNING {case_id}: {note}", err=True)
    typer.echo(result.table.render())
    typer.echo(f"empty ground truth: {EMPTY_GT_POLICY}")
    typer.echo(f"{result.n_cases} cases; metrics in {result.output_dir}")
    for picture in result.pictures:
        typer.echo(f"picture: {picture}")
