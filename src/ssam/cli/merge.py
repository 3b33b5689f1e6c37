"""``ssam merge``: fold an adapter into its base and save an official-layout checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def merge_entry(
    adapter: Path = typer.Option(..., help="adapter file (.safetensors)"),
    output: Path = typer.Option(..., "--output", "-o", help="merged checkpoint to write (.pth)"),
    sam_checkpoint: Path | None = typer.Option(None, help="base SAM checkpoint of the adapter"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights file"),
    offline: bool = typer.Option(False, help="never download weights"),
) -> None:
    """Fold an adapter into its base SAM and write one checkpoint file.

    OUTPUT has SAM's own key layout (loadable by segment_anything at input size 1024); its
    companion NAME.ssam.safetensors beside it holds the text-affine layer, the trained labels'
    CLIP features and the config with the input size.
    """
    from ssam.cli.common import check_files

    check_files(adapter=adapter, sam_checkpoint=sam_checkpoint, clip_checkpoint=clip_checkpoint)
    from ssam.inference.merge import merge_adapter

    files = merge_adapter(adapter, output, sam_checkpoint, clip_checkpoint, not offline)
    console = Console()
    console.print(files.weights_source, highlight=False)
    console.print(f"merged checkpoint: {files.checkpoint}")
    console.print(f"companion:         {files.companion}")
