"""Turn uploaded bytes into a table, or say precisely why they are not one."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gallop.ingest.problems import Problem, UnreadableFile


def read_table(data: bytes, fmt: str) -> pd.DataFrame:
    """Read CSV (UTF-8, BOM or not), Parquet or JSON Lines.

    Text formats come back with every cell as a string (typing is validation's job, so
    that it can name the cell that is wrong); Parquet keeps its types.
    """
    if not data:
        raise UnreadableFile(Problem("empty_file", "the file is empty (0 bytes)"))
    if fmt == "csv":
        frame = _read_csv(_decode(data))
    elif fmt == "jsonl":
        frame = _read_jsonl(_decode(data))
    elif fmt == "parquet":
        frame = _read_parquet(data)
    else:
        raise UnreadableFile(Problem("unknown_format", f"unknown format {fmt!r}"))
    if len(frame) == 0:
        raise UnreadableFile(
            Problem("no_rows", f"the file has a header but no data rows (columns: {list(frame)})")
        )
    return frame


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableFile(
            Problem(
                "not_utf8",
                f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                f"{exc.start} (line {line}); save it as UTF-8, or upload Parquet",
            )
        ) from exc
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise UnreadableFile(
            Problem("binary_content", "the file holds NUL bytes: it is not text in this format")
        )
    return text


def _read_csv(text: str) -> pd.DataFrame:
    if not text.strip():
        raise UnreadableFile(Problem("empty_file", "the file holds no text"))
    header = next(csv.reader(io.StringIO(text)))
    _check_header(header)
    _check_field_counts(text, len(header))
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=True,
            index_col=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise UnreadableFile(Problem("malformed_csv", f"the CSV cannot be parsed: {exc}")) from exc
    return frame


def _check_field_counts(text: str, expected: int) -> None:
    """pandas silently drops or shifts fields of ragged rows; refuse them instead."""
    reader = csv.reader(io.StringIO(text))
    next(reader)
    ragged: list[str] = []
    total = 0
    for record in reader:
        if record and len(record) != expected:
            total += 1
            if len(ragged) < 5:
                hint = (
                    " (a trailing comma?)" if len(record) == expected + 1 and not record[-1] else ""
                )
                ragged.append(f"line {reader.line_num} has {len(record)}{hint}")
    if total:
        more = f" and {total - len(ragged)} more lines" if total > len(ragged) else ""
        raise UnreadableFile(
            Problem(
                "malformed_csv",
                f"rows must have as many fields as the header ({expected}): "
                + "; ".join(ragged)
                + more,
            )
        )


def _check_header(header: list[str]) -> None:
    blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if blank:
        raise UnreadableFile(Problem("blank_column_name", f"header columns {blank} have no name"))
    twice = sorted(name for name, n in Counter(header).items() if n > 1)
    if twice:
        raise UnreadableFile(
            Problem("duplicate_column", f"the header names {twice} more than once")
        )


def _read_jsonl(text: str) -> pd.DataFrame:
    records: list[dict] = []
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(bad) >= 5:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {number}: {exc.msg}")
            continue
        if not isinstance(record, dict):
            bad.append(f"line {number}: a {type(record).__name__}, not an object")
            continue
        nested = [k for k, v in record.items() if isinstance(v, dict | list)]
        if nested:
            bad.append(f"line {number}: nested values in {nested}")
            continue
        records.append(record)
    if bad:
        raise UnreadableFile(
            Problem(
                "malformed_jsonl",
                "the file is not JSON Lines (one flat JSON object per line): " + "; ".join(bad),
            )
        )
    if not records:
        raise UnreadableFile(Problem("empty_file", "the file holds no JSON objects"))
    columns = list(dict.fromkeys(k for r in records for k in r))
    frame = pd.DataFrame.from_records(records, columns=columns)
    # JSON's types are kept per cell; text cells are validated like CSV cells.
    return frame.astype(object).where(frame.notna(), None)


def _read_parquet(data: bytes) -> pd.DataFrame:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(
            Problem("not_parquet", f"the bytes are not a readable Parquet file: {exc}")
        ) from exc
    _check_header(table.column_names)
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise UnreadableFile(
            Problem(
                "nested_column",
                f"columns {nested} hold lists or structs; gallop reads flat tables only",
                column=nested[0],
            )
        )
    return table.to_pandas()
