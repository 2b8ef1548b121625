"""Filling a data table in one step, its columns already as wide as what they hold.

Textual's ``DataTable`` widens an automatically sized column only when the table is next idle. A row drawn
before that keeps its cells cut to the heading's width: a subject code ``P-2026-0001`` under the heading
"Code" shows as ``P-20``, and stays so if the table is not drawn again. :func:`fill_table` measures the cells
itself and gives every column its width when it adds it, so the first drawing of a row is already whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _cut(cell: Cell, width: int) -> Cell:
    """``cell`` cut to ``width`` cells, ending in an ellipsis when cut."""
    if _width(cell) <= width:
        return cell
    cut = cell.copy() if isinstance(cell, Text) else Text(cell, end="")
    cut.truncate(width, overflow="ellipsis")
    return cut


def column_widths(
    headings: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    limits: Mapping[int, int] | None = None,
    fixed: Mapping[int, int] | None = None,
) -> list[int]:
    """Each column's width: its widest cell or heading, at most ``limits[index]`` where one is given, exactly
    ``fixed[index]`` where one is given."""
    widths = [
        max([cell_len(heading), *(_width(row[index]) for row in rows)])
        for index, heading in enumerate(headings)
    ]
    for index, limit in (limits or {}).items():
        widths[index] = min(widths[index], max(1, limit))
    for index, width in (fixed or {}).items():
        widths[index] = max(1, width)
    return widths


def fill_table(
    table: DataTable[Cell],
    headings: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    keys: Sequence[str] | None = None,
    column_keys: Sequence[str] | None = None,
    limits: Mapping[int, int] | None = None,
    fixed: Mapping[int, int] | None = None,
    ellipsis: bool = True,
) -> list[int]:
    """Replace the table's columns and rows: ``rows`` under ``headings``, each column sized to its widest cell
    (see :func:`column_widths` for ``limits`` and ``fixed``). A cell wider than its column is cut to end in an
    ellipsis, or with ``ellipsis=False`` kept whole in the table's data and cropped by the table as it draws
    it. Returns the widths given.

    The cursor goes back to the first row (as ``DataTable.clear`` leaves it); the caller moves it."""
    if keys is not None and len(keys) != len(rows):
        raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
    widths = column_widths(headings, rows, limits, fixed)
    table.clear(columns=True)
    for index, (heading, width) in enumerate(zip(headings, widths, strict=True)):
        table.add_column(heading, width=width, key=column_keys[index] if column_keys is not None else None)
    for number, row in enumerate(rows):
        cells = [_cut(cell, width) for cell, width in zip(row, widths, strict=True)] if ellipsis else row
        table.add_row(*cells, key=keys[number] if keys is not None else None)
    return widths


__all__ = ["Cell", "column_widths", "fill_table"]
