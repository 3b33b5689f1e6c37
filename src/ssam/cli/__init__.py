"""The ``ssam`` console command: thin shells over library functions, one module per command."""

from ssam.cli.main import app, main

__all__ = ["app", "main"]
