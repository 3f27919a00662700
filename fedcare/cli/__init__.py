"""fedcare.cli: the ``fedcare`` command, one module per audience."""

from fedcare.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
