"""``ssam info``: load the base files (and an adapter) and say what they are."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ssam.cli.choices import Variant


def info_entry(
    model: Variant = typer.Option("litemedsam", "--model", help="base model"),
    sam_checkpoint: Path | None = typer.Option(
        None, help="base checkpoint (default: the variant's own; LiteMedSAM's is installed)"
    ),
    image_size: int = typer.Option(256, help="input size S"),
    text_encoder: str = typer.Option("clip_vit_b32", help="text encoder"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights file"),
    adapter: Path | None = typer.Option(None, help="an adapter to check against the base"),
    offline: bool = typer.Option(False, help="never download"),
) -> None:
    """Load and verify a base checkpoint (and an adapter on it); print what was loaded."""
    from ssam.cli.common import check_files

    check_files(adapter=adapter, sam_checkpoint=sam_checkpoint, clip_checkpoint=clip_checkpoint)
    from ssam.config.model import ModelConfig
    from ssam.factory import create_model
    from ssam.tuning.adapter import load_adapter
    from ssam.tuning.methods import configure_trainable

    config = ModelConfig(
        variant=model,
        image_size=image_size,
        sam_checkpoint=sam_checkpoint,
        text_encoder=text_encoder,
        clip_checkpoint=clip_checkpoint,
        allow_download=not offline,
    )
    built = create_model(config)
    console = Console()
    console.print(built.weights_source, highlight=False)
    for key, value in built.base_info.to_dict().items():
        console.print(f"{key}: {value}")
    groups = configure_trainable(built, config.method)
    console.print(f"trainable parameters: {sum(groups.values()):,}")
    if adapter is not None:
        adapter_config = load_adapter(built, adapter)
        console.print(f"adapter {adapter}: labels {adapter_config.get('labels')}")
