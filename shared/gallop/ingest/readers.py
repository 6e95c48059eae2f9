"""Turn uploaded bytes into a table, or say precisely why they are not one.

The work one upload may cause is bounded before any table is built: a first pass over
the bytes (C-speed searches, no per-cell objects) counts columns, rows and the longest
cell, refuses what is beyond the limits, and estimates the memory the table will need;
only then does pandas or pyarrow read it. Nothing here may raise anything but
UnreadableFile for what the bytes hold.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gallop.ingest.problems import Problem, UnreadableFile, some_names
from gallop.settings import Settings, get_settings

BOM = b"\xef\xbb\xbf"
CHUNK = 1 << 20
# What one cell of an upload costs at the peak of its ingestion (its bytes, the frame
# read, validation's typed copies, the canonical frame and its Parquet): about 1.5 x what
# benchmarks/ingest_limits.py measured (CSV 51-76 bytes, Parquet 40-67, JSON Lines 240:
# each record is a dict before it is a frame).
BYTES_PER_CELL = {"csv": 100, "parquet": 100, "jsonl": 360}

_EOL = re.compile(rb"[\r\n]")
# One CSV field from where it starts: quoted (doubled quotes inside; what follows the
# closing quote up to a separator belongs to it, as for pandas), or plain.
_FIELD = re.compile(rb'"[^"]*(?:""[^"]*)*"[^,\r\n]*|[^,\r\n]*')
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BLANK = re.compile(rb"[ \t\r\n]*\Z")


@dataclass(frozen=True)
class Limits:
    max_columns: int
    max_cell_chars: int
    max_json_depth: int
    max_decompressed_bytes: int
    max_memory_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        assert settings.max_decompressed_bytes is not None  # filled in by Settings
        return cls(
            max_columns=settings.max_columns,
            max_cell_chars=settings.max_cell_chars,
            max_json_depth=settings.max_json_depth,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            max_memory_bytes=settings.max_validation_memory_mb << 20,
        )


def read_table(data: bytes, fmt: str, limits: Limits | None = None) -> pd.DataFrame:
    """Read CSV (UTF-8, BOM or not, any line ending), Parquet or JSON Lines, the text
    formats also gzip-compressed (fmt "csv.gz", "jsonl.gz").

    Text formats come back with every cell as a string (typing is validation's job, so
    that it can name the cell that is wrong); Parquet keeps its types.
    """
    limits = limits or Limits.of(get_settings())
    if not data:
        raise UnreadableFile(Problem("empty_file", "the file is empty (0 bytes)"))
    if fmt.endswith(".gz"):
        data, fmt = _gunzip(data, limits.max_decompressed_bytes), fmt.removesuffix(".gz")
    if fmt == "csv":
        frame = _read_csv(data, limits)
    elif fmt == "jsonl":
        frame = _read_jsonl(data, limits)
    elif fmt == "parquet":
        frame = _read_parquet(data, limits)
    else:
        raise UnreadableFile(Problem("unknown_format", f"unknown format {fmt!r}"))
    if len(frame) == 0:
        raise UnreadableFile(
            Problem(
                "no_rows",
                f"the file has a header but no data rows (columns: {some_names(list(frame))})",
            )
        )
    return frame


# -- compressed uploads ------------------------------------------------------------------


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip file (one member or several), refusing one that would inflate
    beyond `limit`: a first pass only counts, so a bomb costs time bounded by the limit
    and no memory."""
    try:
        if _inflated_size(data, limit) > limit:
            raise UnreadableFile(
                Problem(
                    "decompressed_too_large",
                    f"the file inflates to more than {limit:,} bytes (the limit for "
                    "compressed uploads); split it into smaller files",
                )
            )
        return gzip.decompress(data)
    except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise UnreadableFile(
            Problem("not_gzip", f"the file is not readable as gzip: {exc}")
        ) from exc


def _inflated_size(data: bytes, limit: int) -> int:
    """What `data` inflates to, counted up to just past `limit`. The input is fed in small
    pieces: each call copies what it leaves unconsumed."""
    size, view, at = 0, memoryview(data), 0
    inflater, fed = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), False
    pending: bytes | memoryview = b""
    while pending or at < len(data):
        if not pending:
            pending, at = view[at : at + CHUNK], at + CHUNK
        size += len(inflater.decompress(pending, CHUNK))
        fed, pending = True, inflater.unconsumed_tail
        if size > limit:
            return size
        if inflater.eof:  # the next member, if any, starts in what is left
            pending = inflater.unused_data
            inflater, fed = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), False
    if fed and not inflater.eof:
        raise EOFError("the gzip file is truncated")
    return size


# -- text ----------------------------------------------------------------------------------


def _check_text(data: bytes, start: int) -> None:
    """UTF-8 and no NUL bytes, checked in chunks (never the whole file as one str)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for at in range(start, len(data), CHUNK):
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(data[at : at + CHUNK], final=at + CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            offset = at - pending + exc.start
            line = data.count(b"\n", 0, offset) + 1
            raise UnreadableFile(
                Problem(
                    "not_utf8",
                    f"the file is not UTF-8 text: byte 0x{data[offset]:02x} at offset "
                    f"{offset} (line {line}); save it as UTF-8, or upload Parquet",
                )
            ) from exc
    if data.find(b"\x00", start) != -1:
        raise UnreadableFile(
            Problem("binary_content", "the file holds NUL bytes: it is not text in this format")
        )


def _text_start(data: bytes) -> int:
    start = len(BOM) if data.startswith(BOM) else 0
    _check_text(data, start)
    if _BLANK.match(data, start):
        raise UnreadableFile(Problem("empty_file", "the file holds no text"))
    return start


def _line_after(data: bytes, eol: int) -> int:
    """Where the line that ends at `eol` is followed: \\r\\n, \\r and \\n all end a line."""
    return eol + 2 if data[eol : eol + 2] == b"\r\n" else eol + 1


def _cell_chars(data: bytes, start: int, end: int) -> int:
    """Characters of the cell written at data[start:end] (quotes undone)."""
    if data[start : start + 1] == b'"':
        start, end = start + 1, data.rfind(b'"', start + 1, end)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chars = sum(
        len(decoder.decode(data[at : min(at + CHUNK, end)])) for at in range(start, end, CHUNK)
    )
    return chars - data.count(b'""', start, end)


def _too_large(problem_column: str | None, line: int, chars: int, limit: int) -> UnreadableFile:
    where = f"column {problem_column!r} on line {line}" if problem_column else f"line {line}"
    return UnreadableFile(
        Problem(
            "cell_too_large",
            f"a cell in {where} holds {chars:,} characters; the limit is {limit:,}",
            column=problem_column,
        )
    )


# -- CSV -------------------------------------------------------------------------------------


class _Record(NamedTuple):
    line: int  # where it starts, 1-based
    fields: int
    trailing_empty: bool  # ends with a separator: "a trailing comma?"
    longest: tuple[int, int] | None  # the longest cell's span, when it may be over the limit


def _records(data: bytes, pos: int, max_fields: int, max_cell: int) -> Iterator[_Record]:
    """The records of a CSV, measured without building them. A line without quotes is
    measured with one count; only lines with quotes are walked field by field. A record
    wider than `max_fields` is yielded as soon as that is known, with fields=max_fields+1."""
    line, end = 1, len(data)
    while pos < end:
        found = _EOL.search(data, pos)
        eol = found.start() if found else end
        if eol == pos:  # a blank line holds no record
            pos, line = _line_after(data, eol), line + 1
            continue
        if data.find(b'"', pos, eol) == -1:
            fields = data.count(b",", pos, eol) + 1
            longest = None
            if eol - pos > max_cell and fields <= max_fields:
                longest = _longest_plain_cell(data, pos, eol)
            yield _Record(line, fields, data[eol - 1] == ord(","), longest)
            pos, line = _line_after(data, eol), line + 1
            continue
        fields, longest, at, start_line = 0, (pos, pos), pos, line
        while True:
            match = _FIELD.match(data, at)
            assert match is not None  # the plain alternative matches the empty string
            a, b = match.span()
            fields += 1
            if b - a > longest[1] - longest[0]:
                longest = (a, b)
            if fields > max_fields:
                yield _Record(start_line, fields, False, None)
                return
            if b < end and data[b] == ord(","):
                at = b + 1
                continue
            break
        inner = data.count(b"\n", pos, b) or data.count(b"\r", pos, b)
        over = longest[1] - longest[0] > max_cell
        yield _Record(start_line, fields, a == b, longest if over else None)
        pos, line = (_line_after(data, b) if b < end else end), line + 1 + inner


def _longest_plain_cell(data: bytes, start: int, end: int) -> tuple[int, int]:
    best, at = (start, start), start
    while at <= end:
        comma = data.find(b",", at, end)
        stop = end if comma == -1 else comma
        if stop - at > best[1] - best[0]:
            best = (at, stop)
        at = stop + 1
    return best


def _read_csv(data: bytes, limits: Limits) -> pd.DataFrame:
    start = _text_start(data)
    records = _records(data, start, limits.max_columns, limits.max_cell_chars)
    header_record = next(records, None)
    if header_record is None:
        raise UnreadableFile(Problem("empty_file", "the file holds no text"))
    if header_record.fields > limits.max_columns:
        raise UnreadableFile(
            Problem(
                "too_many_columns",
                f"the header has {_count_header(data, start, limits)} columns; the limit is "
                f"{limits.max_columns:,}",
            )
        )
    header = _header_names(data, start, header_record, limits)
    _check_header(header)
    rows = _check_rows(data, records, header, limits)
    _check_memory(rows, len(header), limits, "csv")
    try:
        return pd.read_csv(
            io.BytesIO(data),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=True,
            index_col=False,
            encoding="utf-8",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise UnreadableFile(Problem("malformed_csv", f"the CSV cannot be parsed: {exc}")) from exc


def _count_header(data: bytes, start: int, limits: Limits) -> str:
    """How wide a too-wide header is: exact when it is plain, else a lower bound."""
    found = _EOL.search(data, start)
    eol = found.start() if found else len(data)
    if data.find(b'"', start, eol) == -1:
        return f"{data.count(b',', start, eol) + 1:,}"
    return f"more than {limits.max_columns:,}"


def _header_names(data: bytes, start: int, header: _Record, limits: Limits) -> list[str]:
    """The header's names (at most max_columns of them, each at most max_cell_chars)."""
    if header.longest is not None:
        chars = _cell_chars(data, *header.longest)
        if chars > limits.max_cell_chars:
            raise _too_large(None, 1, chars, limits.max_cell_chars)
    names, at = [], start
    for _ in range(header.fields):
        match = _FIELD.match(data, at)
        assert match is not None
        cell = match.group()
        if cell.startswith(b'"'):
            closing = cell.rfind(b'"')
            cell = cell[1:closing].replace(b'""', b'"') + cell[closing + 1 :]
        names.append(cell.decode("utf-8"))
        at = match.end() + 1
    return names


def _check_rows(data: bytes, records: Iterator[_Record], header: list[str], limits: Limits) -> int:
    """Data rows, refusing ragged ones (pandas silently drops or shifts their fields) and
    cells over the limit; returns how many there are."""
    expected, rows, total = len(header), 0, 0
    ragged: list[str] = []
    for record in records:
        rows += 1
        if record.fields != expected:
            total += 1
            if len(ragged) < 5:
                hint = (
                    " (a trailing comma?)"
                    if record.fields == expected + 1 and record.trailing_empty
                    else ""
                )
                count = (
                    f"more than {limits.max_columns:,}"
                    if record.fields > limits.max_columns
                    else f"{record.fields}"
                )
                ragged.append(f"line {record.line} has {count}{hint}")
            if record.fields > limits.max_columns:
                break  # measuring on would cost without telling more
            continue
        if record.longest is not None:
            chars = _cell_chars(data, *record.longest)
            if chars > limits.max_cell_chars:
                column = _column_at(data, record.longest[0], header)
                raise _too_large(column, record.line, chars, limits.max_cell_chars)
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
    return rows


def _column_at(data: bytes, offset: int, header: list[str]) -> str | None:
    """The column of a plain line's cell that starts at `offset` (None when quoted)."""
    found = data.rfind(b"\n", 0, offset)
    line_start = max(found, data.rfind(b"\r", 0, offset)) + 1
    if data.find(b'"', line_start, offset) != -1:
        return None
    return header[data.count(b",", line_start, offset)]


def _check_header(header: list[str]) -> None:
    blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if blank:
        raise UnreadableFile(
            Problem("blank_column_name", f"header columns {some_names(blank)} have no name")
        )
    twice = sorted(name for name, n in Counter(header).items() if n > 1)
    if twice:
        raise UnreadableFile(
            Problem("duplicate_column", f"the header names {some_names(twice)} more than once")
        )


def _check_memory(rows: int, columns: int, limits: Limits, fmt: str) -> None:
    needed = rows * columns * BYTES_PER_CELL[fmt]
    if needed > limits.max_memory_bytes:
        raise UnreadableFile(
            Problem(
                "too_large_to_validate",
                f"the table has {rows:,} rows x {columns:,} columns; validating it would "
                f"take about {needed >> 20:,} MB, over the limit of "
                f"{limits.max_memory_bytes >> 20:,} MB: split it into smaller files",
            )
        )


# -- JSON Lines ------------------------------------------------------------------------------


def _read_jsonl(data: bytes, limits: Limits) -> pd.DataFrame:
    at = _text_start(data)
    records: list[dict] = []
    columns: dict[str, None] = {}
    bad: list[str] = []
    lines = max(data.count(b"\n"), data.count(b"\r")) + 1
    for number, line in _lines(data, at):
        if len(bad) >= 5:
            break
        if not line.strip():
            continue
        unreadable = _unparsable_json(line, limits)
        if unreadable:
            bad.append(f"line {number}: {unreadable}")
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
            bad.append(f"line {number}: nested values in {some_names(nested)}")
            continue
        if len(line) > limits.max_cell_chars:
            for key, value in record.items():
                if isinstance(value, str) and len(value) > limits.max_cell_chars:
                    raise _too_large(key, number, len(value), limits.max_cell_chars)
        columns.update(dict.fromkeys(record))
        if len(columns) > limits.max_columns:
            raise UnreadableFile(
                Problem(
                    "too_many_columns",
                    f"the records name more than {limits.max_columns:,} columns (the limit)",
                )
            )
        if not records:  # the first record tells how wide the table will be
            _check_memory(lines, len(columns), limits, "jsonl")
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
    _check_memory(len(records), len(columns), limits, "jsonl")
    frame = pd.DataFrame.from_records(records, columns=list(columns))
    # JSON's types are kept per cell; text cells are validated like CSV cells.
    return frame.astype(object).where(frame.notna(), None)


def _lines(data: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
    number, end = 1, len(data)
    while pos < end:
        found = _EOL.search(data, pos)
        eol = found.start() if found else end
        yield number, data[pos:eol]
        pos, number = _line_after(data, eol), number + 1


def _unparsable_json(line: bytes, limits: Limits) -> str | None:
    """Why a line must not be handed to the JSON parser (which recurses into nesting and
    builds every key): too deep, or too wide. Brackets and commas are counted outside
    strings; a line that has few at all is not searched for strings."""
    brackets = line.count(b"[") + line.count(b"{")
    commas = line.count(b",")
    if brackets <= limits.max_json_depth and commas < limits.max_columns:
        return None
    bare = _JSON_STRING.sub(b'""', line)
    if bare.count(b"[") + bare.count(b"{") > limits.max_json_depth:
        return (
            f"values nested in lists or objects (more than {limits.max_json_depth} brackets; "
            "not read further)"
        )
    if bare.count(b",") >= limits.max_columns:
        return f"more than {limits.max_columns:,} fields (the column limit)"
    return None


# -- Parquet -----------------------------------------------------------------------------------


def _read_parquet(data: bytes, limits: Limits) -> pd.DataFrame:
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        names = parquet.schema_arrow.names
        if len(names) > limits.max_columns:
            raise UnreadableFile(
                Problem(
                    "too_many_columns",
                    f"the file has {len(names):,} columns; the limit is {limits.max_columns:,}",
                )
            )
        _check_header(names)
        _check_memory(parquet.metadata.num_rows, len(names), limits, "parquet")
        table = parquet.read()
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableFile(
            Problem("not_parquet", f"the bytes are not a readable Parquet file: {exc}")
        ) from exc
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise UnreadableFile(
            Problem(
                "nested_column",
                f"columns {some_names(nested)} hold lists or structs; gallop reads flat "
                "tables only",
                column=nested[0],
            )
        )
    return table.to_pandas()
