"""``ssam export --onnx``: image encoder and label-prompted mask decoder as ONNX, checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ssam.cli.common import parse_labels
from ssam.errors import ONNX_PACKAGES, ConfigError, require_packages

if TYPE_CHECKING:
    import numpy as np

TOLERANCE = 1e-3


def load_check_image(path: Path | None, size: int) -> tuple[np.ndarray, str]:
    """(C, H, W) in 0-255 from ``path`` (a 2D file), or a seeded random image."""
    import numpy as np

    from ssam.data.io import read_image
    from ssam.data.transforms import resolve_intensity, scale_intensity

    if path is None:
        rng = np.random.default_rng(0)
        return rng.uniform(0, 255, (3, size, size)).astype(np.float32), "a random image"
    image, properties = read_image(path)
    if not properties.is_2d:
        raise ConfigError(f"{path}: --check-image must be a 2D image")
    intensity = resolve_intensity(None, image, is_2d=True)
    return scale_intensity(image[..., 0], intensity), str(path)


def export_entry(
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="folder for the ONNX files (required)"
    ),
    old_output: Path | None = typer.Option(None, "--output", hidden=True),
    onnx: bool = typer.Option(False, "--onnx", help="export to ONNX (the supported format)"),
    adapter: Path | None = typer.Option(None, help="adapter file (.safetensors)"),
    merged: Path | None = typer.Option(None, help="merged checkpoint (.pth)"),
    sam_checkpoint: Path | None = typer.Option(None, help="base SAM checkpoint of the adapter"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights file"),
    label: list[str] | None = typer.Option(
        None, "--label", "-l", help="labels to export (default: the trained labels)"
    ),
    tokens_as_input: bool = typer.Option(
        False, help="label tokens as a decoder input (saved as label_tokens.npy)"
    ),
    check_image: Path | None = typer.Option(
        None, help="2D image for the onnxruntime check (default: a random image)"
    ),
    check: bool = typer.Option(True, help="compare onnxruntime with PyTorch"),
    offline: bool = typer.Option(False, help="never download weights"),
) -> None:
    """Export the encoder and label-prompted decoder as ONNX, checked in onnxruntime.

    The adapter is merged first. Exits with status 1 if onnxruntime's logits differ from
    PyTorch's by 1e-3 or more.
    """
    from ssam.cli.common import load_predictor, require_output_dir

    output = require_output_dir(output_dir, old_output)
    if not onnx:
        raise ConfigError("choose an export format: --onnx")
    require_packages("ssam export --onnx", ONNX_PACKAGES)
    from ssam.inference.export import check_onnx, export_onnx

    predictor = load_predictor(adapter, merged, sam_checkpoint, clip_checkpoint, "cpu", not offline)
    labels = predictor.resolve_labels(parse_labels(label))
    files = export_onnx(predictor.model, output, labels, tokens_as_input)
    console = Console()
    console.print(f"wrote {files.encoder}, {files.decoder}, {files.config}")
    if not check:
        return
    image, source = load_check_image(check_image, predictor.image_size)
    diffs = check_onnx(files, predictor.model, image)
    console.print(
        f"onnxruntime vs PyTorch on {source}: embeddings {diffs['embeddings']:.2e}, "
        f"logits {diffs['logits']:.2e} (max |logit| {diffs['logits_range']:.2f})"
    )
    if diffs["logits"] >= TOLERANCE:
        console.print(f"[bold red]logits differ by {diffs['logits']:.2e} >= {TOLERANCE}[/]")
        raise typer.Exit(code=1)
