"""Tables on stdout. In a terminal, rich's tables, in colour; in a pipe or a file, the same
tables at their natural width and without colour codes. The first column (a model's name, a
metric) never wraps, so that `grep` finds it: where the terminal is too narrow for the table,
each row becomes a block of `column: value` lines instead."""

from __future__ import annotations

import sys

# The least width of a column other than the first, for the table layout to be readable.
MIN_COLUMN = 12


def console():
    """A rich Console for stdout: colour only on a terminal, never a wrap in a pipe."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    # Wide enough for any row: nothing is folded, so every line can be searched.
    return Console(force_terminal=False, color_system=None, width=100_000)


def print_table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    right: tuple[str, ...] = (),
    out=None,
) -> None:
    """Print `rows` under `columns` (those in `right` right-aligned) on `out`, a Console."""
    from rich.table import Table
    from rich.text import Text

    out = out or console()
    key_width = max([len(columns[0])] + [len(row[0]) for row in rows])
    # Borders and padding take 3 characters a column, plus 1.
    needed = key_width + (MIN_COLUMN + 3) * (len(columns) - 1) + 4
    if out.width < needed:
        out.print(Text(title, style="bold"), crop=False)
        for row in rows:
            out.print(Text(row[0], style="bold"), no_wrap=True, crop=False)
            for name, value in zip(columns[1:], row[1:], strict=True):
                out.print(Text(f"  {name}: {value}"))
        return
    table = Table(title=title, title_justify="left")
    table.add_column(columns[0], no_wrap=True, min_width=key_width)
    for name in columns[1:]:
        table.add_column(name, overflow="fold", justify="right" if name in right else "left")
    for row in rows:
        table.add_row(*(Text(value) for value in row))
    out.print(table)
