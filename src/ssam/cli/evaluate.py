"""``ssam evaluate``: Dice, IoU and HD95 per case and label of an adapter (or, without one, of
the untrained base model: the baseline) on a split."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_entry(
    config: Path | None = typer.Argument(None, help="the training config (datasets and split)"),
    adapter: Path | None = typer.Option(
        None, help="adapter file (e.g. RUN/best.safetensors); none: score the untrained model"
    ),
    split: str = typer.Option("val", help="train, val, test, or all (every labelled case)"),
    data: Path | None = typer.Option(None, help="one dataset folder, instead of a config"),
    label: str | None = typer.Option(None, help="label name for --data"),
    output_dir: Path | None = typer.Option(None, help="where metrics.csv and summary.json go"),
    sam_checkpoint: Path | None = typer.Option(None, help="SAM base checkpoint"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights"),
    base: Path | None = typer.Option(None, help="a finished `ssam demo` run as the base model"),
    batch_size: int = typer.Option(8, help="slices per encoder call"),
    threads: str | None = typer.Option(None, help="torch CPU threads: a number, or auto"),
    set_: list[str] = typer.Option([], "--set", help="override any setting: key=value"),
) -> None:
    """Score an adapter at the original resolution (volumes as volumes, HD95 in mm)."""
    from ssam.cli.common import build_config, use_threads
    from ssam.evaluation.evaluate import SPLITS, UNTRAINED, evaluate
    from ssam.evaluation.metrics import EMPTY_GT_POLICY

    if split not in SPLITS:
        raise typer.BadParameter(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    cfg = build_config(config, data, label, set_, sam_checkpoint, clip_checkpoint, base)
    use_threads(threads if threads is not None else cfg.threads)
    if adapter is None:
        typer.echo(f"no --adapter: scoring the {UNTRAINED}, a baseline", err=True)
    result = evaluate(cfg, adapter, split, output_dir, batch_size)  # type: ignore[arg-type]
    for name, how in result.table.context["splits"].items():
        typer.echo(f"{split} split of {name}: {how}", err=True)
    for case_id, notes in result.table.context.get("warnings", {}).items():
        for note in notes:
            typer.echo(f"WARNING {case_id}: {note}", err=True)
    typer.echo(result.table.render())
    typer.echo(f"empty ground truth: {EMPTY_GT_POLICY}")
    typer.echo(f"{result.n_cases} cases; metrics in {result.output_dir}")
