"""Validate a table against its dataset spec and build its canonical form.

Canonical form: key columns as text, the time as UTC timestamps, numeric features as
float32 (training and serving see the same numbers), target and odds as float64,
categorical and other columns as text, rows in a fixed order. Text is kept exactly as
uploaded: a cell such as "=cmd()" stays those characters and is never evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_integer_dtype,
    is_numeric_dtype,
)

from gallop.ingest import rules
from gallop.ingest.canonical import sort_canonical
from gallop.ingest.problems import Problem, at_rows, some_names
from gallop.spec import DatasetSpec, TargetOrder, Task

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})


@dataclass
class Validation:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    canonical: pd.DataFrame | None = None
    features: list[str] = field(default_factory=list)
    text_columns: list[str] = field(default_factory=list)
    # Where each canonical row was in the upload (0-based): problems found on canonical
    # rows name the rows of the file.
    source_rows: np.ndarray | None = None

    def upload_mask(self, canonical_mask: np.ndarray) -> np.ndarray:
        assert self.source_rows is not None
        mask = np.zeros(len(canonical_mask), dtype=bool)
        mask[self.source_rows[canonical_mask]] = True
        return mask

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(frame: pd.DataFrame, spec: DatasetSpec, limit: int = 20) -> Validation:
    result = Validation()
    missing = _missing_columns(frame, spec)
    if missing:
        result.problems.append(
            Problem(
                "missing_column",
                f"required column(s) {missing} are missing; the file has "
                f"{len(frame.columns):,} columns: {some_names(list(frame.columns))}",
                column=missing[0],
            )
        )
        return result

    n = len(frame)
    out: dict[str, Any] = {}
    # Default features are found by parsing every candidate column: keep those parses.
    parsed = _numeric_columns(frame, spec) if spec.features is None else {}
    features = list(parsed) if spec.features is None else spec.features
    result.features = features

    for name in features:
        values, bad, raw = parsed[name] if name in parsed else _numeric(frame[name])
        result.problems += rules.not_numeric(name, bad, raw, limit=limit)
        out[name], found = rules.as_feature(name, values, limit)
        result.problems += found

    target, bad, raw = _numeric(frame[spec.target])
    result.problems += rules.not_numeric(spec.target, bad, raw, "target", limit)
    not_finite = ~np.isfinite(target) & ~bad
    if not_finite.any():
        result.problems.append(
            at_rows(
                "target_not_finite",
                f"target {spec.target!r} is missing or infinite",
                not_finite,
                column=spec.target,
                limit=limit,
            )
        )
    result.problems.extend(_check_target_values(target, spec, limit))
    out[spec.target] = target

    for name in spec.post_race:
        if name in out or name == spec.odds:
            continue  # odds declared post-race is checked as odds below
        values, bad, raw = _numeric(frame[name])
        result.problems += rules.not_numeric(name, bad, raw, "post-race column", limit)
        out[name] = values

    if spec.odds:
        odds, bad, raw = _numeric(frame[spec.odds])
        result.problems += rules.not_numeric(spec.odds, bad, raw, "odds", limit)
        result.problems += rules.invalid_odds(spec.odds, odds, limit)
        out[spec.odds] = odds if spec.odds not in features else out[spec.odds]

    for key in (spec.group, spec.entity):
        if key:
            text = _text(frame[key])
            result.problems += rules.missing_key(key, text.isna().to_numpy(), limit)
            out[key] = text

    if spec.time:
        times, bad = _timestamps(frame[spec.time])
        result.problems += rules.not_a_time(spec.time, bad, frame[spec.time].to_numpy(), limit)
        out[spec.time] = times

    taken = set(out)
    text_columns = [c for c in frame.columns if c not in taken]
    for name in text_columns:
        out[name] = _text(frame[name])
    result.text_columns = [c for c in text_columns if c not in spec.categorical]

    if spec.group and spec.group in out:
        result.problems.extend(_check_groups(out, spec, limit, result.warnings))

    duplicated = frame.duplicated(keep="first").to_numpy()
    if duplicated.any():
        result.problems.append(
            at_rows("duplicate_row", "rows repeat an earlier row exactly", duplicated, limit=limit)
        )

    if result.ok:
        ordered = _canonical(out, spec, features, n)
        result.source_rows = ordered.index.to_numpy()
        result.canonical = ordered.reset_index(drop=True)
    return result


def _missing_columns(frame: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    required = [c for c in (spec.target, spec.group, spec.time, spec.entity, spec.odds) if c]
    required += list(spec.features or []) + list(spec.categorical) + list(spec.post_race)
    present = set(frame.columns)
    return [c for c in dict.fromkeys(required) if c not in present]


def _numeric_columns(
    frame: pd.DataFrame, spec: DatasetSpec
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Default features: every column with no other role whose values are all numbers,
    with its parse (values, not-a-number mask, raw cells)."""
    roles = {spec.target, spec.group, spec.time, spec.entity, *spec.categorical, *spec.post_race}
    chosen = {}
    for name in frame.columns:
        if name not in roles:
            result = _numeric(frame[name])
            if not result[1].any():
                chosen[name] = result
    return chosen


def _numeric(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values with NaN for missing, mask of cells that are not numbers, raw cells)."""
    if is_bool_dtype(column.dtype) or (
        is_numeric_dtype(column.dtype) and not isinstance(column.dtype, pd.CategoricalDtype)
    ):
        values = column.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(len(column), dtype=bool), column.to_numpy()
    raw = column.to_numpy(dtype=object)
    if isinstance(column.dtype, pd.StringDtype):  # CSV: every cell text, checked in bulk
        text = column.astype("string")
        missing = (text.isna() | text.str.strip().str.lower().isin(MISSING_TOKENS)).to_numpy(
            dtype=bool, na_value=True
        )
        parsed = pd.to_numeric(text.mask(missing), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        return np.where(missing, np.nan, parsed), np.isnan(parsed) & ~missing, raw
    missing = np.fromiter(
        (
            v is None
            or (isinstance(v, float) and np.isnan(v))
            or (isinstance(v, str) and v.strip().lower() in MISSING_TOKENS)
            for v in raw
        ),
        dtype=bool,
        count=len(raw),
    )
    is_bool = np.fromiter((isinstance(v, bool) for v in raw), dtype=bool, count=len(raw))
    parsed = pd.to_numeric(
        pd.Series(np.where(missing | is_bool, None, raw), dtype=object), errors="coerce"
    ).to_numpy(dtype=np.float64, na_value=np.nan)
    # A JSON true/false is not a number, even though Python would count it as one.
    bad = (np.isnan(parsed) & ~missing) | is_bool
    return np.where(missing, np.nan, parsed), bad, raw


def _text(column: pd.Series) -> pd.Series:
    """Cells as text, exactly as written; integers print without a trailing '.0'."""
    if is_integer_dtype(column.dtype):  # exact: int64 ids beyond 2**53 must not collide
        return column.astype("Int64").astype("string")
    if is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype):
        as_float = column.astype("float64")
        whole = as_float.dropna()
        if len(whole) and (whole == np.round(whole)).all():
            text = as_float.map(lambda v: None if np.isnan(v) else str(int(v)))
            return text.astype("string")
    if isinstance(column.dtype, pd.StringDtype):
        text = column.astype("string")
        return text.mask(text == "")
    return column.astype(object).map(_cell_text).astype("string")


def _cell_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = value if isinstance(value, str) else str(value)
    return None if text == "" else text


def _timestamps(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    if is_datetime64_any_dtype(column.dtype):
        times = pd.to_datetime(column, utc=True)
    else:
        text = column.astype(object).map(_cell_text)
        times = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = times.isna().to_numpy()
    return times.astype("datetime64[us, UTC]"), bad


def _check_target_values(target: np.ndarray, spec: DatasetSpec, limit: int) -> list[Problem]:
    finite = np.isfinite(target)
    if spec.task is Task.BINARY:
        wrong = finite & ~np.isin(target, (0.0, 1.0))
        if wrong.any():
            return [
                at_rows(
                    "target_not_binary",
                    f"target {spec.target!r} must be 0 or 1",
                    wrong,
                    column=spec.target,
                    values=target,
                    limit=limit,
                )
            ]
    if spec.task is Task.RANKING and spec.target_order is TargetOrder.ASCENDING:
        wrong = finite & (target < 1)
        if wrong.any():
            return [
                at_rows(
                    "invalid_position",
                    f"target {spec.target!r} is a finishing position and must be 1 or more",
                    wrong,
                    column=spec.target,
                    values=target,
                    limit=limit,
                )
            ]
    return []


def _check_groups(
    out: dict[str, Any], spec: DatasetSpec, limit: int, warnings: list[Problem]
) -> list[Problem]:
    assert spec.group
    problems: list[Problem] = []
    frame = pd.DataFrame({"g": out[spec.group], "y": out[spec.target]})
    group = frame["g"]
    known = group.notna().to_numpy()
    sizes = group.map(group.value_counts())
    small = known & (sizes.to_numpy(dtype=float, na_value=0) < 2)
    if small.any() and spec.task is Task.RANKING:
        # Real data has them (a walkover, a query of one document): kept and scored, but
        # left out of ranking training, which counts them.
        warnings.append(
            at_rows(
                "single_row_group",
                f"groups in {spec.group!r} of a single row hold nothing to rank: they are "
                "kept, and left out of ranking training",
                small,
                column=spec.group,
                values=group.to_numpy(),
                limit=limit,
            )
        )

    if spec.entity and spec.entity in out:
        entity = out[spec.entity]
        codes = pd.factorize(group)[0], pd.factorize(entity)[0]  # -1 where missing
        problems += rules.duplicate_entity(spec.group, spec.entity, *codes, (group, entity), limit)

    if spec.time and spec.time in out:
        times = pd.Series(out[spec.time])
        spread = times.groupby(group.to_numpy()).transform("nunique").to_numpy()
        mixed = known & (spread > 1)
        if mixed.any():
            problems.append(
                at_rows(
                    "group_time_mismatch",
                    f"rows of one {spec.group!r} have different "
                    f"{spec.time!r} values; a race has one start time",
                    mixed,
                    column=spec.time,
                    values=group.to_numpy(),
                    limit=limit,
                )
            )

    if spec.task is Task.RANKING:
        levels = frame.groupby("g")["y"].transform("nunique").to_numpy()
        flat = known & (levels < 2) & ~small
        if flat.any():
            issue = at_rows(
                "no_target_order",
                f"groups whose {spec.target!r} is the same for every row have no order to learn",
                flat,
                column=spec.target,
                values=group.to_numpy(),
                limit=limit,
            )
            # Finishing positions always order a race; graded relevance is often all zero
            # for a query (LETOR), which is legitimate but carries no signal.
            if spec.target_order is TargetOrder.ASCENDING:
                problems.append(issue)
            else:
                warnings.append(issue)
    return problems


def _canonical(out: dict[str, Any], spec: DatasetSpec, features: list[str], n: int) -> pd.DataFrame:
    keys = [c for c in (spec.group, spec.time, spec.entity) if c]
    rest = [c for c in out if c not in keys and c != spec.target and c not in features]
    order = keys + [spec.target] + features + [c for c in rest if c in spec.categorical]
    order += [c for c in rest if c not in order]
    frame = pd.DataFrame({name: _as_series(out[name], n) for name in order})
    return sort_canonical(frame, spec)  # the index: each row's place in the upload


def _as_series(values: Any, n: int) -> pd.Series:
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return series.reset_index(drop=True)
