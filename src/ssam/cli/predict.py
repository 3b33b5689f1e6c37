"""``ssam predict``: segment image files, folders and volumes by label name."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ssam.cli.choices import BACKEND_HELP, Backend, IntensityOption
from ssam.cli.common import intensity_option, parse_labels
from ssam.errors import ConfigError

if TYPE_CHECKING:
    from ssam.inference.files import CaseOutcome


def print_summary(outcomes: list[CaseOutcome], console: Console, processes: int = 1) -> None:
    """A table of cases, then each failure on one unwrapped line: ``FAILED id (path): why``.
    With several ``processes``, the table says which process handled each case."""
    table = Table(title="ssam predict")
    table.add_column("case")
    if processes > 1:
        table.add_column("process", justify="right")
    table.add_column("status")
    table.add_column("label map / note", overflow="fold")
    styles = {"done": "green", "skipped": "yellow", "failed": "bold red"}
    for item in outcomes:
        detail = "see below" if item.status == "failed" else item.reason
        if item.outputs and item.status == "done":
            detail = item.outputs[0].name
        process = [str(item.process)] if processes > 1 else []
        table.add_row(item.case_id, *process, f"[{styles[item.status]}]{item.status}[/]", detail)
    console.print(table)
    for item in outcomes:
        if item.status == "failed":
            line = f"FAILED {item.case_id} ({item.source}): {item.reason}"
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    for item in outcomes:
        for warning in item.warnings:
            console.print(f"WARNING {item.case_id}: {warning}", soft_wrap=True, markup=False)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")


def predict_entry(
    inputs: list[str] = typer.Argument(
        ...,
        help="image files (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), folders, DICOM series "
        "folders or glob patterns",
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="output folder (required)"
    ),
    old_output: Path | None = typer.Option(None, "--output", hidden=True),
    adapter: Path | None = typer.Option(None, help="adapter file (.safetensors)"),
    merged: Path | None = typer.Option(
        None, help="merged checkpoint (.pth; its .ssam.safetensors companion beside it)"
    ),
    sam_checkpoint: Path | None = typer.Option(None, help="base SAM checkpoint of the adapter"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights file"),
    label: list[str] | None = typer.Option(
        None,
        "--label",
        "-l",
        help="label name (repeat, or comma-separate); default: the labels the model was trained on",
    ),
    batch_size: int = typer.Option(8, help="slices per image-encoder call"),
    axis: int = typer.Option(-1, help="volume axis to slice along (-1: the last)"),
    intensity: IntensityOption = intensity_option(),
    window_level: float | None = typer.Option(None, help="CT window level (--intensity ct)"),
    window_width: float | None = typer.Option(None, help="CT window width (--intensity ct)"),
    save_probabilities: bool = typer.Option(False, help="also write per-label probabilities"),
    save_masks: bool = typer.Option(
        False, help="also write each label's own binary mask (overlapping labels kept)"
    ),
    overlay: bool = typer.Option(True, help="write an overlay PNG per case"),
    overlay_slices: int = typer.Option(4, help="slices shown in a volume's overlay"),
    overwrite: bool = typer.Option(False, help="redo cases whose outputs exist"),
    dicom_seg: bool = typer.Option(
        False,
        "--dicom-seg",
        help="also write ID.seg.dcm for DICOM inputs (series folders, single files): a DICOM-SEG "
        "referencing the source instances, one segment per label",
    ),
    device: str = typer.Option(
        "cpu",
        help="torch device; launched as several processes (torchrun, accelerate launch): cpu, "
        "or cuda for each process's own GPU",
    ),
    offline: bool = typer.Option(False, help="never download weights"),
    progress: bool = typer.Option(True, help="show progress bars (on a terminal only)"),
    threads: str = typer.Option("auto", help="torch CPU threads: a number, or auto"),
    backend: Backend = typer.Option("torch", help=BACKEND_HELP),
) -> None:
    """Segment each case by label name; write label maps, overlays and sizes (JSON).

    Exits with status 1 when any case failed (the summary names each with its reason).
    """
    from ssam.cli.common import (
        check_model_files,
        load_option_predictor,
        require_output_dir,
        use_threads,
    )
    from ssam.inference.distributed import (
        finish_processes,
        local_main_first,
        predict_shared_cases,
        start_processes,
    )
    from ssam.inference.files import CaseOutcome, PredictOptions
    from ssam.inference.inputs import discover_cases

    output_dir = require_output_dir(output_dir, old_output)
    labels = parse_labels(label)
    cases, problems = discover_cases(inputs)  # before the model: a typo fails in a second
    if not cases:
        named = "; ".join(f"{path}: {reason}" for path, reason in problems)
        raise ConfigError(f"no input to predict ({named})")
    outcomes = [CaseOutcome(Path(p).name, p, "failed", reason) for p, reason in problems]
    check_model_files(adapter, merged, sam_checkpoint, clip_checkpoint)
    processes = start_processes(device)  # one process unless launched as several
    threads_line = use_threads(threads, processes.local_count)
    with local_main_first(processes):  # downloads and caches once per machine
        predictor = load_option_predictor(
            adapter,
            merged,
            sam_checkpoint,
            clip_checkpoint,
            processes.device,
            offline,
            intensity,
            batch_size,
            (window_level, window_width),
            backend,
        )
    if processes.is_main:
        print(threads_line, file=sys.stderr)
    if processes.is_main and processes.count > 1:
        print(f"predicting with {processes.describe()}", file=sys.stderr)
    options = PredictOptions(
        output_dir=output_dir,
        labels=labels,
        axis=axis,
        save_probabilities=save_probabilities,
        save_masks=save_masks,
        overlay=overlay,
        overlay_slices=overlay_slices,
        overwrite=overwrite,
        dicom_seg=dicom_seg,
    )
    outcomes += predict_shared_cases(predictor, cases, options, processes, progress)
    if processes.is_main:  # every process has all outcomes; the main one prints them
        print_summary(outcomes, Console(), processes.count)
        sys.stdout.flush()  # before a launcher may stop the processes that end first
    finish_processes(processes)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(code=1)
