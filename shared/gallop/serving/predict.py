"""Requests in, predictions out: one vectorised validation pass, the ONNX session, then
the per-race arithmetic (win probability, Harville place probability, rank).

Rows come as objects (`{"rows": [{feature: value, ...}]}`) or as columns and data
(`{"columns": [...], "data": [[...], ...]}`, the cheaper shape to send and to parse).
A missing value is null (NaN to the model, which knows where it goes); infinities,
text in a numeric field, unknown or missing names are refused, naming them. A categorical
feature is sent as its text; text the training data did not hold is missing. Errors number
rows from 1, as ingestion's reports and a spreadsheet do.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from gallop.echo import some
from gallop.features.categories import code_of
from gallop.serving.model import LoadedModel

MAX_ROWS = 1000
NUMERIC_TYPES = {float, int, type(None)}  # as JSON parses them (bool is not int here)
FLOAT32_MAX = float(np.finfo(np.float32).max)
PLACES = 3


class InputError(ValueError):
    """A request the model cannot answer; `status` is the HTTP status to reply with, and
    `problems` (a race card's) each rule its rows break, as an ingestion report lists them."""

    def __init__(
        self, message: str, status: int = 422, problems: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


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
        if len(set(columns)) < len(columns):  # which copy would count?
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            raise InputError(f"columns named more than once: {some(repeated)}")
        ragged = [i for i, r in enumerate(data, 1) if len(r) != len(columns)]
        if ragged:
            raise InputError(f"data rows {ragged[:10]} do not have {len(columns)} values")
        return columns, data
    rows = body.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError("'rows' must be a list of objects, one per row")
    _check_count(len(rows))
    columns = list(dict.fromkeys(chain.from_iterable(rows)))  # loops in C: it's per request
    short = [i for i, row in enumerate(rows, 1) if len(row) != len(columns)]
    if short:  # a name left out is not a missing value: send null for that
        absent = sorted(set(columns) - set(rows[short[0] - 1]))
        raise InputError(
            f"rows {short[:10]} lack names other rows have (row {short[0]}: {some(absent)})"
        )
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
    where = {name: i for i, name in enumerate(columns)}  # not list scans: n x features
    missing = [f for f in model.features if f not in where]
    if unknown or missing:
        parts = [
            f"unknown: {some(unknown)}" if unknown else "",
            f"missing: {some(missing)}" if missing else "",
        ]
        raise InputError("feature names " + "; ".join(p for p in parts if p))
    group = model.group
    groups = None
    if group:
        if group not in where:
            raise InputError(f"rows need their group column {group!r} (the race they are in)")
        at = where[group]
        groups = np.array([_group_id(row[at], i) for i, row in enumerate(values, 1)], dtype=object)
    index = [where[f] for f in model.features]
    take = itemgetter(*index) if len(index) > 1 else lambda row: (row[index[0]],)
    picked = [take(row) for row in values]
    if model.category_codes:  # a category as its text (or number); unseen is missing
        codes = list(model.category_codes.items())

        def coded(row: tuple[Any, ...]) -> list[Any]:
            out = list(row)
            for j, index in codes:  # the categories' places only: most columns are numbers
                out[j] = code_of(out[j], index)
            return out

        picked = list(map(coded, picked))
    # Numbers and nulls only (true/false would pass as 1/0): one set of types per row.
    if not set(chain.from_iterable(map(type, row) for row in picked)) <= NUMERIC_TYPES:
        raise InputError(_first_bad_value(model, picked))
    try:
        table = np.array(picked, dtype=np.float64).reshape(len(picked), len(model.features))
    except OverflowError:  # an integer past float64's range (Python's JSON reads any size)
        raise InputError("a number is beyond any finite float32 value") from None
    out_of_range = np.abs(table) > FLOAT32_MAX  # NaN compares False: a null is fine
    if out_of_range.any():
        row, column = np.argwhere(out_of_range)[0]
        raise InputError(f"row {row + 1}: {model.features[column]} is not a finite float32 number")
    return table.astype(np.float32), groups


def _group_id(value: Any, row: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise InputError(f"row {row}: the group id must be a non-empty string or number")
    return id_text(value)


def id_text(value: Any) -> str:
    """An id as text: a whole number sent as 1001.0 is the id 1001, as its results (and a
    JSON reader) name it."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _first_bad_value(model: LoadedModel, picked: list[tuple[Any, ...]]) -> str:
    for i, row in enumerate(picked, 1):
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
    """P(first) + P(second) + P(third) per runner, in O(n^2). The chance left once one or
    two runners are placed is summed from the others' chances, never taken as 1 - p, and
    sums that leave a runner out are summed without it, never subtracted: a runner holding
    nearly all the chance would otherwise leave 0 / 0, or a difference of two nearly
    equal sums."""
    n = len(p)
    order = np.argsort(-p, kind="stable")
    q = p[order]  # largest first: a sum of the first ones dwarfs what follows them
    tail = np.zeros(n + 1)  # tail[m] = q[m] + ... + q[n - 1], summed from the smallest
    tail[:n] = np.cumsum(q[::-1])[::-1]
    lo, hi, others = _pairs(n)
    # the chance of all but runner j, and of all but runners j and k (lo < hi)
    rest1 = (tail[0] - tail[:-1]) + tail[1:]
    rest2 = (tail[0] - tail[lo]) + (tail[lo + 1] - tail[hi]) + tail[hi + 1]
    first = np.divide(q, rest1, out=np.zeros(n), where=rest1 > 0)  # P(j first) / rest1[j]
    second = q * (others @ first)  # P(i second) = sum over j != i of P(j first, i second)
    # after[j, k] = P(k second | j first) / rest2[j, k]; summed over k != i as the sums
    # before and after i, side by side.
    after = np.divide(q, rest2, out=np.zeros((n, n)), where=others & (rest2 > 0))
    sums = np.zeros((n, n + 1))
    np.cumsum(after, axis=1, out=sums[:, 1:])
    backwards = np.zeros((n, n + 1))
    np.cumsum(after[:, ::-1], axis=1, out=backwards[:, 1:])
    leaving_out = sums[:, :-1] + backwards[:, n - 1 :: -1]
    third = q * (first @ np.where(others, leaving_out, 0.0))
    place = np.empty(n)
    place[order] = np.minimum(q + second + third, 1.0)
    return place


@lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For runners j, k of a field of n: the lower and higher of the two, and j != k (the
    same for every race of that size: made once)."""
    at = np.arange(n)
    lo, hi = np.minimum.outer(at, at), np.maximum.outer(at, at)
    return lo, hi, lo != hi


def ranks(score: np.ndarray, race: np.ndarray) -> np.ndarray:
    """1 for the highest score in its race (ties: the earlier row first)."""
    order = np.lexsort((-score, race))
    in_order = race[order]
    position = np.arange(len(order))
    # each row's race starts at the last position where the race changed
    starts = np.where(np.concatenate(([True], in_order[1:] != in_order[:-1])), position, 0)
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = position - np.maximum.accumulate(starts) + 1
    return rank


def predictions(
    model: LoadedModel, features: np.ndarray, groups: np.ndarray | None
) -> dict[str, Any]:
    """Column-wise results: {"score": [...], ...}, each a float64 or int array."""
    out = model.run(features)
    score = out["score"][:, 0].astype(np.float64)
    beyond = np.flatnonzero(~np.isfinite(score))
    if len(beyond):  # inputs so far out that float32 overflows: no probability means much
        rows = (beyond[:10] + 1).tolist()
        raise InputError(f"rows {rows}: the score is not finite; check the inputs")
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
    return predict_features(model, *feature_matrix(model, columns, values))


def predict_features(
    model: LoadedModel, features: np.ndarray, groups: np.ndarray | None
) -> dict[str, Any]:
    """The reply for a float32 feature matrix in the model's order (a completed card's)."""
    columns_out = predictions(model, features, groups)
    names = list(columns_out)
    lists = [columns_out[n].tolist() for n in names]
    return {
        "model_id": model.model_id,
        "predictions": [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)],
    }


def group_ids(values: list[Any]) -> np.ndarray:
    """Each row's group id as feature rows give it (InputError naming a bad one)."""
    return np.array([_group_id(value, i) for i, value in enumerate(values, 1)], dtype=object)


def explain_body(model: LoadedModel, body: Any, top_k: int = 5) -> dict[str, Any]:
    return explain_columns(model, *parse(model, body), top_k=top_k)


def explain_columns(
    model: LoadedModel, columns: list[str], values: list[list[Any]], top_k: Any = 5
) -> dict[str, Any]:
    check_top_k(model, top_k)
    features, _ = feature_matrix(model, columns, values)
    return explain_features(model, features, top_k)


def check_top_k(model: LoadedModel, top_k: Any) -> None:
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, int)
        or not 1 <= top_k <= len(model.features)
    ):
        raise InputError(f"top_k must be a whole number from 1 to {len(model.features)}")


def explain_features(model: LoadedModel, features: np.ndarray, top_k: int) -> dict[str, Any]:
    """The reply for a float32 feature matrix in the model's order (a completed card's)."""
    from gallop.serving.explain import explanations

    return {"model_id": model.model_id, "explanations": explanations(model, features, top_k)}
