"""Entry point: the Typer app, command registration, and one-line errors for user mistakes."""

from __future__ import annotations

import sys

import typer
import typer.core
from pydantic import ValidationError

from ssam.cli import demo as demo_cmd
from ssam.cli import evaluate as evaluate_cmd
from ssam.cli import export as export_cmd
from ssam.cli import info as info_cmd
from ssam.cli import merge as merge_cmd
from ssam.cli import params as params_cmd
from ssam.cli import predict as predict_cmd
from ssam.cli import serve as serve_cmd
from ssam.cli import train as train_cmd
from ssam.errors import SSAMError, summarise_validation


def _hide_flag_types() -> None:
    """Typer labels on/off flags ``<bool>`` in help although they take no value: show no type."""
    shown = typer.core.TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich


_hide_flag_types()
app = typer.Typer(
    name="ssam",
    help="S-SAM: tune Segment Anything's singular values; segment medical images by label name.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help paragraphs wrap to the terminal, not at source breaks
)
app.command("demo")(demo_cmd.demo_entry)
app.command("params")(params_cmd.params_entry)
app.command("info")(info_cmd.info_entry)
app.command("predict")(predict_cmd.predict_entry)
app.command("merge")(merge_cmd.merge_entry)
app.command("export")(export_cmd.export_entry)
app.command("train")(train_cmd.train_entry)
app.command("evaluate")(evaluate_cmd.evaluate_entry)
app.command("serve")(serve_cmd.serve_entry)


@app.callback()
def _root() -> None:
    """S-SAM command line."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. User errors (bad file, shape, label, setting) print one line on stderr and
    exit with status 2; usage errors are Typer's own (status 2 as well)."""
    try:
        app(args=argv)
    except SSAMError as err:
        print(f"ssam: error: {err}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as err:
        print(f"ssam: error: {summarise_validation(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
