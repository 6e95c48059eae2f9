"""The bad uploads of the validation contract, each built from a good race file.

Shared by the unit tests (validate in memory) and the end-to-end tests (upload
through the API and the moto server), so both cover exactly the same cases.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd


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


def _first_race(frame: pd.DataFrame) -> pd.Series:
    return frame["race_id"] == frame.loc[0, "race_id"]


def _horse_twice(frame: pd.DataFrame) -> None:
    frame.loc[frame.index[_first_race(frame)][1], "horse_id"] = frame.loc[0, "horse_id"]


def _dead_heat_everywhere(frame: pd.DataFrame) -> None:
    frame.loc[_first_race(frame), "position"] = "1"


def _repeat_row(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[5]]])


def _too_large(good: bytes) -> bytes:
    from tests.conftest import TEST_MAX_UPLOAD_BYTES

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
    BadInput(
        "text-in-numeric-column", "csv", _set(3, "weight_kg", "57,5"), "not_numeric", "'weight_kg'"
    ),
    BadInput("target-missing", "csv", _set(4, "position", ""), "target_not_finite", "'position'"),
    BadInput(
        "target-infinite", "csv", _set(4, "position", "inf"), "target_not_finite", "'position'"
    ),
    BadInput("feature-infinite", "csv", _set(6, "draw", "-Infinity"), "infinite_value", "'draw'"),
    BadInput(
        "entity-twice-in-group",
        "csv",
        _edit(_horse_twice),
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
]
