"""Tables for the terminal that never cut what people copy from them.

Columns holding ids, repository names or addresses are `no_wrap`; when the
terminal (or a pipe's default 80 columns) is narrower than the table needs to
show them whole, the table is printed wider than the terminal (which wraps
the lines) instead of cutting them to "exq-XGYA-KP…".
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

_UNLIMITED = 100_000


def whole(table: Table, *columns: str) -> Table:
    """Mark `columns` (by header) as never wrapped or cut; returns `table`."""
    for column in table.columns:
        if column.header in columns:
            column.no_wrap = True
            column.overflow = "ignore"
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print `table` at the terminal's width, or wider where its whole columns need it."""
    console = console or Console()
    for column in table.columns:
        if not column.no_wrap:
            column.overflow = "fold"  # a word too long for its column folds, never "…"
    needed = Measurement.get(console, console.options.update_width(_UNLIMITED), table).minimum
    if needed > console.width:
        console = Console(file=console.file, width=needed, no_color=console.no_color)
    console.print(table, crop=False)
