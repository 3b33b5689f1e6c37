"""``python -m ssam``: the same as the ``ssam`` command."""

from ssam.cli.main import main

main()
