"""The `exoquic` command line: one module per command group.

`main` builds the parser from the modules named in `main.COMMANDS`; each has
`register(commands)`, which adds its subcommands. Command bodies import what
they use, so that building the parser (and `exoquic --help`) stays fast.
"""

from exoquic.cli.main import main

__all__ = ["main"]
