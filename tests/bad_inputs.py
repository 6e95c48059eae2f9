"""The bad uploads of the validation contract, each built from a good race file.

Shared by the unit tests (validate in memory) and the end-to-end tests (upload
through the API and the moto server), so both cover exactly the same cases.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from gallop.synth.mistakes import horse_twice, typo_in_number
from tests.conftest import TEST_MAX_COLUMNS, TEST_MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class BadInput:
    id: str
    file_format: str
    make: Callable[[bytes], bytes]
    code: str  # the problem code the report must carry
    says: str  # words the message must contain


def _frame(good: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def _edit(change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Callable[[bytes], bytes]:
    def make(good: bytes) -> bytes:
        frame = _frame(good)
        changed = change(frame)
        return _csv(frame if changed is None else changed)

    return make


def _set(row: int, column: str, value: str) -> Callable[[bytes], bytes]:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[row, column] = value

    return _edit(change)


def _dead_heat_everywhere(frame: pd.DataFrame) -> None:
    frame.loc[frame["race_id"] == frame.loc[0, "race_id"], "position"] = "1"


def _repeat_row(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[5]]])


def _too_large(good: bytes) -> bytes:
    return good * (TEST_MAX_UPLOAD_BYTES // len(good) + 2)


def _latin1(good: bytes) -> bytes:
    frame = _frame(good)
    frame.loc[2, "course"] = "longchamp-café"
    return frame.to_csv(index=False).encode("latin-1")


def _parquet_bytes(good: bytes) -> bytes:
    sink = io.BytesIO()
    _frame(good).to_parquet(sink)
    return sink.getvalue()


def _extra_field(good: bytes) -> bytes:
    lines = good.split(b"\n")
    lines[3] += b",7"
    return b"\n".join(lines)


def _trailing_commas(good: bytes) -> bytes:
    lines = good.rstrip(b"\n").split(b"\n")
    return b"\n".join([lines[0]] + [line + b"," for line in lines[1:]]) + b"\n"


def _gzip(make: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    return lambda good: gzip.compress(make(good), mtime=0)


def _gzip_bomb(good: bytes) -> bytes:
    """Inflates past the test stack's limit (4 x its upload limit) from a few kilobytes."""
    return gzip.compress(good + b"0" * (4 * TEST_MAX_UPLOAD_BYTES), mtime=0)


def _one_more_column_than_allowed(good: bytes) -> bytes:
    header, first, second = good.split(b"\n")[:3]
    extra = TEST_MAX_COLUMNS - header.count(b",")  # one more than the limit, with the header
    names = b"".join(b",x%d" % i for i in range(extra))
    return b"\n".join([header + names, first + b",1" * extra, second + b",1" * extra, b""])


def _deeply_nested_jsonl(good: bytes) -> bytes:
    depth = 100_000  # the json module recurses once per level: beyond Python's stack
    return b'{"race_id": "R1"}\n{"race_id": ' + b"[" * depth + b"]" * depth + b"}\n"


def _nested_parquet(good: bytes) -> bytes:
    frame = _frame(good)
    frame["tags"] = [["a", "b"]] * len(frame)
    sink = io.BytesIO()
    frame.to_parquet(sink)
    return sink.getvalue()


BAD_INPUTS = [
    BadInput(
        "missing-column",
        "csv",
        _edit(lambda f: f.drop(columns=["position"])),
        "missing_column",
        "'position'",
    ),
    BadInput("text-in-numeric-column", "csv", _edit(typo_in_number), "not_numeric", "'weight_kg'"),
    BadInput("target-missing", "csv", _set(4, "position", ""), "target_not_finite", "'position'"),
    BadInput(
        "target-infinite", "csv", _set(4, "position", "inf"), "target_not_finite", "'position'"
    ),
    BadInput("feature-infinite", "csv", _set(6, "draw", "-Infinity"), "infinite_value", "'draw'"),
    BadInput(
        "entity-twice-in-group",
        "csv",
        _edit(horse_twice),
        "duplicate_entity_in_group",
        "'horse_id'",
    ),
    BadInput(
        "group-without-order", "csv", _edit(_dead_heat_everywhere), "no_target_order", "no order"
    ),
    BadInput("duplicated-row", "csv", _edit(_repeat_row), "duplicate_row", "repeat"),
    BadInput(
        "time-not-a-time", "csv", _set(0, "race_time", "next tuesday"), "not_a_time", "'race_time'"
    ),
    BadInput("odds-not-above-one", "csv", _set(1, "odds", "0.5"), "invalid_odds", "'odds'"),
    BadInput("too-large", "csv", _too_large, "file_too_large", "limit"),
    BadInput("empty-file", "csv", lambda good: b"", "empty_file", "empty"),
    BadInput(
        "header-only",
        "csv",
        lambda good: good.split(b"\n", 1)[0] + b"\n",
        "no_rows",
        "no data rows",
    ),
    BadInput("csv-declared-but-parquet-bytes", "csv", _parquet_bytes, "not_utf8", "UTF-8"),
    BadInput(
        "parquet-declared-but-csv-bytes", "parquet", lambda good: good, "not_parquet", "Parquet"
    ),
    BadInput("not-utf8", "csv", _latin1, "not_utf8", "byte 0xe9"),
    BadInput("row-with-extra-field", "csv", _extra_field, "malformed_csv", "line 4 has 15"),
    BadInput("trailing-commas", "csv", _trailing_commas, "malformed_csv", "a trailing comma?"),
    BadInput("nested-parquet-column", "parquet", _nested_parquet, "nested_column", "'tags'"),
    BadInput("beyond-float32", "csv", _set(2, "weight_kg", "1e39"), "out_of_range", "float32"),
    BadInput(
        "malformed-jsonl",
        "jsonl",
        lambda good: b'{"race_id": "R1"}\n{not json}\n',
        "malformed_jsonl",
        "line 2",
    ),
    BadInput(
        "cell-over-131072-characters",
        "csv",
        _set(3, "course", "x" * 131_073),
        "cell_too_large",
        "column 'course' on line 5 holds 131,073 characters",
    ),
    BadInput(
        "more-columns-than-allowed",
        "csv",
        _one_more_column_than_allowed,
        "too_many_columns",
        f"{TEST_MAX_COLUMNS + 1} columns; the limit is {TEST_MAX_COLUMNS}",
    ),
    BadInput(
        "jsonl-nested-100000-deep", "jsonl", _deeply_nested_jsonl, "malformed_jsonl", "line 2"
    ),
    BadInput("gzip-bomb", "csv.gz", _gzip_bomb, "decompressed_too_large", "inflates to more"),
    BadInput(
        "gzip-truncated",
        "csv.gz",
        lambda good: _gzip(lambda g: g)(good)[:-100],
        "not_gzip",
        "truncated",
    ),
    BadInput("gzip-declared-but-plain", "csv.gz", lambda good: good, "not_gzip", "gzip"),
    BadInput(
        "gzipped-csv-with-a-problem",
        "csv.gz",
        _gzip(_edit(typo_in_number)),
        "not_numeric",
        "'weight_kg'",
    ),
]
