"""Requests in, predictions out: one vectorised validation pass, the ONNX session, then
the per-race arithmetic (win probability, Harville place probability, rank).

Rows come as objects (`{"rows": [{feature: value, ...}]}`) or as columns and data
(`{"columns": [...], "data": [[...], ...]}`, the cheaper shape to send and to parse).
A missing value is null (NaN to the model, which knows where it goes); infinities,
text in a numeric field, unknown or missing names are refused, naming them.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from gallop.serving.model import LoadedModel

MAX_ROWS = 1000
NUMERIC_TYPES = {float, int, type(None)}  # as JSON parses them (bool is not int here)
FLOAT32_MAX = float(np.finfo(np.float32).max)
PLACES = 3


class InputError(ValueError):
    """A request the model cannot answer; `status` is the HTTP status to reply with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def parse(model: LoadedModel, body: Any) -> tuple[list[str], list[list[Any]]]:
    """(column names, row values) from either request shape, bounds checked."""
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with 'rows' (or 'columns' and 'data')")
    if "columns" in body or "data" in body:
        columns, data = body.get("columns"), body.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InputError("'columns' must be a list of column names")
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise InputError("'data' must be a list of rows, each a list of values")
        _check_count(len(data))
        ragged = [i for i, r in enumerate(data) if len(r) != len(columns)]
        if ragged:
            raise InputError(f"data rows {ragged[:10]} do not have {len(columns)} values")
        return columns, data
    rows = body.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError("'rows' must be a list of objects, one per row")
    _check_count(len(rows))
    columns = list(dict.fromkeys(chain.from_iterable(rows)))  # loops in C: it's per request
    short = [i for i, row in enumerate(rows) if len(row) != len(columns)]
    if short:  # a name left out is not a missing value: send null for that
        absent = sorted(set(columns) - set(rows[short[0]]))
        raise InputError(f"rows {short[:10]} lack names other rows have (row {short[0]}: {absent})")
    return columns, [list(map(row.get, columns)) for row in rows]


def is_card(model: LoadedModel, columns: list[str]) -> bool:
    """Race-card rows: the identifiers (race, time, runner) and pre-race fields, without
    the model's features, which the server completes from the entity snapshot."""
    identifiers = set(model.manifest.get("identifiers") or [])
    return (
        bool(identifiers)
        and identifiers <= set(columns)
        and not set(model.features) <= set(columns)
    )


def _check_count(n: int) -> None:
    if n == 0:
        raise InputError("no rows to predict")
    if n > MAX_ROWS:
        raise InputError(f"{n} rows is more than {MAX_ROWS} per request", status=413)


def feature_matrix(
    model: LoadedModel, columns: list[str], values: list[list[Any]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 [n, features] in the model's order, group ids or None)."""
    allowed = set(model.features) | set(model.manifest.get("identifiers") or [])
    unknown = [c for c in columns if c not in allowed]
    missing = [f for f in model.features if f not in columns]
    if unknown or missing:
        parts = [f"unknown: {unknown}" if unknown else "", f"missing: {missing}" if missing else ""]
        raise InputError("feature names " + "; ".join(p for p in parts if p))
    group = model.group
    groups = None
    if group:
        if group not in columns:
            raise InputError(f"rows need their group column {group!r} (the race they are in)")
        at = columns.index(group)
        groups = np.array([_group_id(row[at], i) for i, row in enumerate(values)], dtype=object)
    index = [columns.index(f) for f in model.features]
    take = itemgetter(*index) if len(index) > 1 else lambda row: (row[index[0]],)
    picked = [take(row) for row in values]
    # Numbers and nulls only (true/false would pass as 1/0): one set of types per row.
    if not set(chain.from_iterable(map(type, row) for row in picked)) <= NUMERIC_TYPES:
        raise InputError(_first_bad_value(model, picked))
    table = np.array(picked, dtype=np.float64).reshape(len(picked), len(model.features))
    out_of_range = np.abs(table) > FLOAT32_MAX  # NaN compares False: a null is fine
    if out_of_range.any():
        row, column = np.argwhere(out_of_range)[0]
        raise InputError(f"row {row}: {model.features[column]} is not a finite float32 number")
    return table.astype(np.float32), groups


def _group_id(value: Any, row: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise InputError(f"row {row}: the group id must be a non-empty string or number")
    return str(value)


def _first_bad_value(model: LoadedModel, picked: list[tuple[Any, ...]]) -> str:
    for i, row in enumerate(picked):
        for name, value in zip(model.features, row, strict=True):
            if type(value) not in NUMERIC_TYPES:
                return f"row {i}: {name} must be a number or null, not {value!r}"[:300]
    raise AssertionError("called without a bad value")


def race_indices(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's race as 0..races-1 in order of first appearance (rows of a race need
    not be next to each other)."""
    first_seen = {group: i for i, group in enumerate(dict.fromkeys(groups.tolist()))}
    return np.fromiter(map(first_seen.__getitem__, groups.tolist()), np.int64), len(first_seen)


def win_probabilities(score: np.ndarray, race: np.ndarray, races: int) -> np.ndarray:
    top = np.full(races, -np.inf)
    np.maximum.at(top, race, score)
    weight = np.exp(score - top[race])
    return weight / np.bincount(race, weights=weight, minlength=races)[race]


def place_probabilities(win: np.ndarray, race: np.ndarray, races: int) -> np.ndarray:
    """Chance of finishing in the first three (Harville: each place a fresh race among the
    runners left, in proportion to their win chances). Fields of three or fewer: 1."""
    place = np.ones_like(win)
    for r in range(races):
        rows = np.flatnonzero(race == r)
        if len(rows) > PLACES:
            place[rows] = _harville_top3(win[rows])
    return place


def _harville_top3(p: np.ndarray) -> np.ndarray:
    """P(first) + P(second) + P(third) per runner, in O(n^2)."""
    distinct = ~np.eye(len(p), dtype=bool)
    after_first = np.where(distinct, p[None, :] / np.maximum(1.0 - p[:, None], 1e-300), 0.0)
    second = p @ after_first  # sum over j of p_j * p_i / (1 - p_j)
    # pair[j, k] = P(j first, k second) / (1 - p_j - p_k): what runner i's third place
    # chance multiplies p_i by, summed over the pairs that leave i out.
    pair = p[:, None] * after_first / np.maximum(1.0 - p[:, None] - p[None, :], 1e-300)
    pair = np.where(distinct, pair, 0.0)
    without_i = pair.sum() - pair.sum(axis=1) - pair.sum(axis=0)
    return np.minimum(p + second + p * without_i, 1.0)


def ranks(score: np.ndarray, race: np.ndarray) -> np.ndarray:
    """1 for the highest score in its race (ties: the earlier row first)."""
    order = np.lexsort((-score, race))
    rank = np.empty(len(score), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(race[order])) + 1]
    within = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank[order] = within + 1
    return rank


def predictions(
    model: LoadedModel, features: np.ndarray, groups: np.ndarray | None
) -> dict[str, Any]:
    """Column-wise results: {"score": [...], ...}, each a float64 or int array."""
    out = model.run(features)
    score = out["score"][:, 0].astype(np.float64)
    result: dict[str, np.ndarray] = {"score": score}
    if model.task == "ranking":
        assert groups is not None
        race, races = race_indices(groups)
        win = win_probabilities(score, race, races)
        result |= {
            "win_probability": win,
            "place_probability": place_probabilities(win, race, races),
            "rank": ranks(score, race),
        }
    else:
        for name in model.manifest["onnx_outputs"][2:]:
            result[name] = out[name][:, 0].astype(np.float64)
    return result


def predict_body(model: LoadedModel, body: Any) -> dict[str, Any]:
    return predict_columns(model, *parse(model, body))


def predict_columns(
    model: LoadedModel, columns: list[str], values: list[list[Any]]
) -> dict[str, Any]:
    features, groups = feature_matrix(model, columns, values)
    columns_out = predictions(model, features, groups)
    names = list(columns_out)
    lists = [columns_out[n].tolist() for n in names]
    return {
        "model_id": model.model_id,
        "predictions": [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)],
    }


def explain_body(model: LoadedModel, body: Any, top_k: int = 5) -> dict[str, Any]:
    return explain_columns(model, *parse(model, body), top_k=top_k)


def explain_columns(
    model: LoadedModel, columns: list[str], values: list[list[Any]], top_k: Any = 5
) -> dict[str, Any]:
    from gallop.serving.explain import explanations

    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, int)
        or not 1 <= top_k <= len(model.features)
    ):
        raise InputError(f"top_k must be a whole number from 1 to {len(model.features)}")
    features, _ = feature_matrix(model, columns, values)
    score = model.run(features)["score"][:, 0].astype(np.float64)
    return {"model_id": model.model_id, "explanations": explanations(model, features, score, top_k)}
