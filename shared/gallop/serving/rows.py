"""Rows to score, read from a JSON or CSV document into a /v1/predict body (without the
model): `rows` (a list of objects) or `columns` and `data`. CSV cells are typed as
ingestion would see them: numbers where a whole column is numeric, else text."""

from __future__ import annotations

import io
import json
import re
from typing import Any


class RowsError(ValueError):
    """A document that holds no rows to score; the message says why."""


def rows_body(data: bytes, fmt: str) -> dict[str, Any]:
    """`fmt` is "json" or "csv"."""
    if fmt == "json":
        return json_body(data)
    if fmt == "csv":
        return csv_body(data)
    raise RowsError(f"unknown rows format {fmt!r}: give json or csv")


def sniff_format(data: bytes) -> str:
    """JSON when the document opens with an object or a list, else CSV."""
    return "json" if data.lstrip()[:1] in (b"{", b"[") else "csv"


def json_body(data: bytes) -> dict[str, Any]:
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RowsError(f"not JSON: {exc}") from None
    if isinstance(loaded, list):
        loaded = {"rows": loaded}
    if isinstance(loaded, dict) and "rows" in loaded:
        rows = loaded["rows"]
        if not isinstance(rows, list):
            raise RowsError('"rows" must be a list of row objects')
        wrong = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
        if wrong is not None:
            raise RowsError(f"row {wrong} is not an object")
        if not rows:
            raise RowsError("no rows")
        return {"rows": rows}
    if isinstance(loaded, dict) and "columns" in loaded and "data" in loaded:
        if not loaded["data"]:
            raise RowsError("no rows")
        return {"columns": loaded["columns"], "data": loaded["data"]}
    raise RowsError('expected {"rows": [...]}, a list of row objects, or {"columns", "data"}')


def csv_body(data: bytes) -> dict[str, Any]:
    import pandas as pd

    try:  # as text, as ingestion reads it: ids such as 000050 keep their zeros
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise RowsError("empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise RowsError(f"not a readable CSV: {exc}") from None
    if frame.empty:
        raise RowsError("no rows")
    columns = [csv_column(frame[c].tolist()) for c in frame.columns]
    return {
        "columns": [str(c) for c in frame.columns],
        "data": [list(r) for r in zip(*columns, strict=True)],
    }


def csv_column(cells: list[str]) -> list[Any]:
    """Numbers where every filled cell is one (and none is a zero-padded id), else text;
    an empty cell is a missing value (null)."""
    filled = [c.strip() for c in cells if c.strip()]
    padded = any(re.fullmatch(r"[+-]?0\d+", c) for c in filled)
    if all(map(_is_number, filled)) and not padded:
        return [float(c) if c.strip() else None for c in cells]
    return [c if c.strip() else None for c in cells]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
