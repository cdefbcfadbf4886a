"""Layer 10, the command line: parser and commands, glue only. ``surgery = surgery.cli:main``."""

from surgery.cli.main import main

__all__ = ["main"]
