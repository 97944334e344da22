"""``segflow query VIEW``: read results back from any store as a table, JSON or CSV.

The rows come from :mod:`pipeline.storage.queries` (shared with the HTML report); this module
only renders them. Text output escapes control characters so a hostile app name cannot
rewrite the terminal.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from pipeline.core.text import printable
from pipeline.storage.queries import QueryFilter, run_view

FORMATS = ("table", "json", "csv")
_MAX_CELL = 80


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return value


def _cell(value: Any) -> str:
    if isinstance(value, list):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(_plain(value))
    text = printable(text)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def render(table: pa.Table, fmt: str) -> str:
    """Rows as aligned text, a JSON array of objects, or CSV with a header."""
    rows = table.to_pylist()
    if fmt == "json":
        return orjson.dumps([{k: _plain(v) for k, v in r.items()} for r in rows],
                            option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table.column_names)
        for r in rows:
            w.writerow([",".join(map(str, v)) if isinstance(v, list) else _plain(v)
                        for v in r.values()])
        return buf.getvalue()
    cells = [list(table.column_names)] + [[_cell(v) for v in r.values()] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.column_names))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines) + "\n"


def query(store: Any, view: str, flt: QueryFilter, fmt: str = "table") -> str:
    """Run ``view`` on ``store`` and render it."""
    return render(run_view(store, view, flt), fmt)


__all__ = ["FORMATS", "query", "render"]
