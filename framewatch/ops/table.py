"""The commands' tables: columns as wide as their widest cell, numbers to the right, the last column unpadded.

One function rather than a library: terminaltables (already installed with Faust) draws borders, which scripts
reading the output with `awk` or `cut` would have to strip; `--json` is the form for programs."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence


def text_table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[int] = ()) -> list[str]:
    """The table's lines; `right` lists the columns aligned to the right (counts, figures)."""
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    last = len(header) - 1
    return ["  ".join(cell if i == last and i not in right else cell.rjust(widths[i]) if i in right
                      else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
