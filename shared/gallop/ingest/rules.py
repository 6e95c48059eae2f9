"""The rules a row's values keep, whoever sends them: ingestion (gallop.ingest.validate,
on pandas) and race cards (gallop.features.online, on the predict path, which has no
pandas) both check through these, so what one refuses the other refuses, under the same
problem code. numpy only: each rule takes a column already parsed into arrays, and
returns its problems (none, or one naming every row that breaks it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gallop.ingest.problems import Problem, at_rows


def not_numeric(
    name: str, bad: np.ndarray, raw: Any, what: str = "column", limit: int = 20
) -> list[Problem]:
    """Cells of a numeric column that hold no number; `what` is how the message calls the
    column (column, target, odds...)."""
    if not bad.any():
        return []
    message = f"{what} {name!r} has values that are not numbers"
    return [at_rows("not_numeric", message, bad, column=name, values=raw, limit=limit)]


def as_feature(name: str, values: np.ndarray, limit: int = 20) -> tuple[np.ndarray, list[Problem]]:
    """A feature's float64 values as stored, float32 (training and serving see the same
    numbers), and its problems: NaN is a missing value, ±infinity is refused, and so is a
    number float32 cannot hold."""
    problems = []
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(
            at_rows(
                "infinite_value",
                f"feature {name!r} is ±infinity (NaN or empty means missing and is allowed)",
                infinite,
                column=name,
                limit=limit,
            )
        )
    with np.errstate(over="ignore"):
        stored = values.astype(np.float32)
    overflow = np.isinf(stored) & ~infinite
    if overflow.any():
        problems.append(
            at_rows(
                "out_of_range",
                f"feature {name!r} is beyond float32's range (±3.4e38), in which features "
                "are stored",
                overflow,
                column=name,
                values=values,
                limit=limit,
            )
        )
    return stored, problems


def invalid_odds(name: str, odds: np.ndarray, limit: int = 20) -> list[Problem]:
    """Decimal odds are missing (NaN), or finite and above 1: odds of 1 or less would pay
    back no more than the stake."""
    invalid = ~np.isnan(odds) & ~(np.isfinite(odds) & (odds > 1.0))
    if not invalid.any():
        return []
    message = f"decimal odds {name!r} must be finite and greater than 1"
    return [at_rows("invalid_odds", message, invalid, column=name, values=odds, limit=limit)]


def missing_key(name: str, absent: np.ndarray, limit: int = 20) -> list[Problem]:
    """A key (the group or entity id) is in every row."""
    if not absent.any():
        return []
    message = f"no {name!r}, which every row must have"
    return [at_rows("missing_key", message, absent, column=name, limit=limit)]


def not_a_time(name: str, bad: np.ndarray, raw: Any, limit: int = 20) -> list[Problem]:
    if not bad.any():
        return []
    message = (
        f"column {name!r} has values that are not dates or times, or are out of range "
        "(use ISO 8601, e.g. 2024-05-01T14:30:00Z)"
    )
    return [at_rows("not_a_time", message, bad, column=name, values=raw, limit=limit)]


def duplicate_entity(
    group: str,
    entity: str,
    group_codes: np.ndarray,
    entity_codes: np.ndarray,
    labels: tuple[Any, Any],
    limit: int = 20,
) -> list[Problem]:
    """An entity (horse) runs once in a group (race). The codes number each column's
    distinct keys (pandas' factorize, numpy's unique: any numbering), -1 where the key
    is missing, which is a problem of its own; `labels` are the two columns' keys, to
    quote."""
    known = (group_codes >= 0) & (entity_codes >= 0)
    if not known.any():
        return []
    pair = group_codes.astype(np.int64) * (int(entity_codes.max()) + 1) + entity_codes
    _, inverse, counts = np.unique(pair[known], return_inverse=True, return_counts=True)
    twice = np.zeros(len(pair), dtype=bool)
    twice[known] = counts[inverse.ravel()] > 1
    if not twice.any():
        return []
    groups, entities = (np.asarray(keys, dtype=object) for keys in labels)
    return [
        at_rows(
            "duplicate_entity_in_group",
            f"the same {entity!r} appears twice in one {group!r}",
            twice,
            column=entity,
            values=np.where(twice, groups + " / " + entities, None),
            limit=limit,
        )
    ]
