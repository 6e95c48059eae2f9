"""Online features: a race card plus the entity snapshot gives the row the offline path
would have produced for that race. numpy only: this runs on the predict path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from gallop.features.categories import encode, key_text
from gallop.features.engine import Table, compute
from gallop.features.plan import Plan, build_plan
from gallop.features.roles import roles_for
from gallop.features.state import State
from gallop.spec import DatasetSpec


class CardError(ValueError):
    """A race card that cannot be turned into features; the message says why."""


def card_features(
    card: list[dict[str, Any]], state: State, expected_spec_hash: str | None = None
) -> tuple[list[str], np.ndarray]:
    """(feature names, float32 matrix with one row per card row).

    A card holds races at one start time: runners of a later race on the same card would
    need the earlier races' results, which a card cannot have.
    """
    if expected_spec_hash is not None and state.meta.get("spec_hash") != expected_spec_hash:
        raise CardError("the snapshot was built by another feature spec than expected")
    spec, plan = _spec_and_plan(
        json.dumps(state.meta["spec"], sort_keys=True), tuple(state.meta["data_numeric"])
    )
    if not card:
        raise CardError("the card has no rows")
    check_names(card, spec, plan, state.meta["data_numeric"])
    table = card_table(card, spec, plan.numeric_inputs, plan.text_keys)
    if spec.time and len(np.unique(table[spec.time])) > 1:
        raise CardError(
            "the card holds races at different start times; send one start time per card"
        )
    try:
        outputs, _ = compute(table, plan, roles_for(spec), state)
    except ValueError as exc:
        raise CardError(str(exc)) from None
    vocabularies = state.meta.get("categories") or {}
    for name in plan.categorical:  # unseen text, or a snapshot from before: missing
        outputs[name] = encode(table[name], vocabularies.get(name, []))
    matrix = np.column_stack([outputs[name] for name in plan.features]).astype(np.float32)
    return plan.features, matrix


@lru_cache(maxsize=8)
def _spec_and_plan(spec_json: str, data_numeric: tuple[str, ...]) -> tuple[DatasetSpec, Plan]:
    """Validating a spec builds its plan; both are the same for every card of a snapshot,
    so a warm container does it once, not per request."""
    spec = DatasetSpec.model_validate_json(spec_json)
    return spec, build_plan(spec, list(data_numeric))


def check_names(
    card: list[dict[str, Any]], spec: DatasetSpec, plan: Plan, data_numeric: list[str]
) -> None:
    """A misspelt or left-out field would otherwise be a missing value, silently: every
    name must be a column of the data, and every pre-race input the features read must
    be sent (null where unknown)."""
    sent = set().union(*card)
    roles = (spec.group, spec.time, spec.entity, spec.target, spec.odds)
    known = {*filter(None, roles), *spec.post_race, *spec.categorical, *data_numeric}
    known |= {*plan.numeric_inputs, *plan.text_keys}
    unknown = sorted(sent - known)
    if unknown:
        raise CardError(f"unknown fields {unknown[:10]}: not columns of the model's data")
    after_the_off = {spec.target, *spec.post_race}
    needed = [n for n in plan.numeric_inputs if n not in after_the_off]
    for i, row in enumerate(card):
        lacking = [n for n in needed if n not in row]
        if lacking:
            raise CardError(f"card row {i + 1} lacks {lacking[:10]} (send null when unknown)")


def card_table(
    card: list[dict[str, Any]], spec: DatasetSpec, numeric: list[str], text_keys: list[str]
) -> Table:
    table: Table = {}
    required = {c for c in (spec.group, spec.entity) if c}
    for name in dict.fromkeys(c for c in (spec.group, *text_keys) if c):
        values = [row.get(name) for row in card]
        absent = [i + 1 for i, v in enumerate(values) if v in (None, "")]
        if absent and name in required:
            raise CardError(f"card rows {absent[:10]} have no {name!r}")
        # A missing jockey or trainer is allowed, as offline: its features are missing.
        table[name] = np.array([key_text(v) for v in values], dtype=str)
    if spec.time:
        table[spec.time] = np.array([_micros(row.get(spec.time), i) for i, row in enumerate(card)])
    post_race = {spec.target, *spec.post_race}
    for name in numeric:
        if name in post_race:  # unknown before the off
            table[name] = np.full(len(card), np.nan)
            continue
        # Through float32 first, exactly as ingestion stores features.
        table[name] = np.array(
            [_number(row.get(name), name, i) for i, row in enumerate(card)], dtype=np.float32
        ).astype(np.float64)
    table[spec.target] = np.full(len(card), np.nan)
    return table


def _micros(value: Any, index: int) -> int:
    if not isinstance(value, str):
        raise CardError(f"card row {index + 1}: the race time must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CardError(f"card row {index + 1}: {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59-12:00: past year 9999 in UTC
        raise CardError(f"card row {index + 1}: {value!r} is out of range") from None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _number(value: Any, name: str, index: int) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CardError(f"card row {index + 1}: {name!r} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise CardError(f"card row {index + 1}: {name!r} is not finite")
    return float(value)
