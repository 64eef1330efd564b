"""Command-line parsing helpers that library modules share with `adalas.cli` (the library never
imports the CLI: `train_args.py` builds its own HfArgumentParser with the same one-line errors)."""
from __future__ import annotations


class OneLineErrors:
    """An argparse mixin: a usage error is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
