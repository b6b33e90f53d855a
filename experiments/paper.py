"""The paper's numbers, read from docs/paper.md: the one place they are written.

    from experiments import paper
    paper.table("Table 6")["resnet110"]["test error"]   # 6.43
    paper.value("Table 6", "resnet110", "parameters")   # 1700000.0

A table is the Markdown table under a heading `### NAME`; rows are keyed by their first cell. Numeric cells come back
as floats (1.7e6 included), empty cells as None, everything else as text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

PAPER = Path(__file__).resolve().parents[1] / "docs" / "paper.md"


def _cell(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


@functools.cache
def _tables() -> dict[str, tuple[list[str], dict[str, dict[str, Any]]]]:
    tables: dict[str, tuple[list[str], dict[str, dict[str, Any]]]] = {}
    name = None
    for line in PAPER.read_text().splitlines():
        heading = re.fullmatch(r"###\s+(.+)", line.strip())
        if heading:
            name = heading[1].strip()
            continue
        if name is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if name not in tables:
            tables[name] = (cells, {})
        elif not set("".join(cells)) <= set("-: "):
            header, rows = tables[name]
            rows[cells[0]] = {key: _cell(value) for key, value in zip(header, cells, strict=True)}
    return tables


def table(name: str) -> dict[str, dict[str, Any]]:
    """{first cell: {column: value}} of the table headed `### name` in docs/paper.md."""
    if name not in _tables():
        raise KeyError(f"docs/paper.md has no table {name!r}; it has {sorted(_tables())}.")
    return _tables()[name][1]


def value(name: str, row: str, column: str) -> Any:
    """One cell of a table, by row key and column name."""
    rows = table(name)
    if row not in rows:
        raise KeyError(f"Table {name!r} of docs/paper.md has no row {row!r}; rows: {list(rows)}.")
    return rows[row][column]
