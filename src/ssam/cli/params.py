"""``ssam params``: trainable parameters per group, built without weights or downloads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ssam.cli.choices import Method, Variant

if TYPE_CHECKING:
    from ssam.config.model import ModelConfig


def compute_parameter_report(config: ModelConfig) -> dict:
    """Trainable count per group, total, and share of the official SAM variant's parameters."""
    from ssam.factory import count_sam_parameters, create_architecture
    from ssam.tuning.methods import configure_trainable

    model = create_architecture(config)
    groups = configure_trainable(model, config.method)
    total = sum(groups.values())
    sam_total = count_sam_parameters(config.variant)
    return {
        "variant": config.variant,
        "image_size": config.image_size,
        "method": config.method,
        "groups": groups,
        "trainable": total,
        "sam_parameters": sam_total,
        "share_percent": 100.0 * total / sam_total,
    }


def params_entry(
    model: Variant = typer.Option("litemedsam", "--model", help="base model"),
    image_size: int = typer.Option(256, "--image-size", help="input size S (multiple of 16)"),
    method: Method = typer.Option("ssam", "--method", help="fine-tuning method"),
) -> None:
    """Print the trainable parameters of a method, per group, and their share of SAM's."""
    from ssam.config.model import ModelConfig

    config = ModelConfig(variant=model, image_size=image_size, method=method)
    report = compute_parameter_report(config)
    table = Table(title=f"{method} on {model} at {image_size}x{image_size}")
    table.add_column("trainable group")
    table.add_column("parameters", justify="right")
    for group, count in report["groups"].items():
        table.add_row(group, f"{count:,}")
    table.add_row("total", f"{report['trainable']:,}", style="bold")
    console = Console()
    console.print(table)
    console.print(
        f"{report['trainable']:,} of {model}'s {report['sam_parameters']:,} parameters "
        f"({report['share_percent']:.2f} %)"
    )
