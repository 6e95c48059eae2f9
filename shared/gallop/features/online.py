"""Online features: a race card plus the entity snapshot gives the row the offline path
would have produced for that race. numpy only: this runs on the predict path. A card's
fields keep ingestion's rules (gallop.ingest.rules): what an upload may not hold, a card
may not either."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np

from gallop.echo import some
from gallop.features.categories import encode, key_text
from gallop.features.engine import Table, compute, joined_keys
from gallop.features.plan import Plan, build_plan
from gallop.features.roles import roles_for
from gallop.features.state import KeyState, State
from gallop.ingest import rules
from gallop.ingest.problems import Problem
from gallop.spec import DatasetSpec

NONE = type(None)


class CardError(ValueError):
    """A race card that cannot be turned into features; the message says why, and
    `problems` lists each rule its rows break (rows from 1), as an ingestion report does."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class CardBeforeSnapshot(CardError):
    """A card for a race that starts at or before the newest race of the snapshot: its
    features would be computed from results the race could not have known."""

    def __init__(self, card_time: int, data_end: int) -> None:
        self.card_time, self.data_end = card_time, data_end
        super().__init__(
            f"the card's race starts at {_iso(card_time)}, at or before {_iso(data_end)}, "
            "the start of the newest race in the entity snapshot: its features would see "
            "the future"
        )


def card_features(
    card: list[dict[str, Any]],
    state: State,
    expected_spec_hash: str | None = None,
    vocabularies: dict[str, list[str]] | None = None,
) -> tuple[list[str], np.ndarray]:
    """(feature names, float32 matrix with one row per card row).

    A card holds races at one start time, after the snapshot's newest race (else
    CardBeforeSnapshot): runners of a later race on the same card would need the earlier
    races' results, which a card cannot have. Categorical features are coded with
    `vocabularies` (a model's: the codes it was trained on), by default the snapshot's.
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
    data_end = state.meta.get("data_end")
    if spec.time and data_end is not None and int(table[spec.time][0]) <= data_end:
        raise CardBeforeSnapshot(int(table[spec.time][0]), int(data_end))
    try:
        outputs, _ = compute(table, plan, roles_for(spec), card_state(state, table, plan))
    except ValueError as exc:
        raise CardError(str(exc)) from None
    if vocabularies is None:
        vocabularies = state.meta.get("categories") or {}
    for name in plan.categorical:  # unseen text, or a snapshot from before: missing
        outputs[name] = encode(table[name], vocabularies.get(name, []))
    matrix = np.column_stack([outputs[name] for name in plan.features]).astype(np.float32)
    return plan.features, matrix


# -- the part of a snapshot a card reads ---------------------------------------------------
# A card row's history features read only its own keys' entries (tail rows, career
# counts); the engine sorts every entry it is given, so the whole snapshot would cost
# O(entities) per card (about 25 ms at 100,000 rows). The snapshot is sorted by key once
# per container instead, and each card gets the entries of its own keys.

INDEXED = 8  # snapshots whose index a container keeps (as many as it keeps snapshots)
_indexes: dict[int, tuple[State, dict[str, _KeyIndex]]] = {}


@dataclass(frozen=True)
class _KeyIndex:
    tail_keys: np.ndarray  # the tail's keys, sorted
    tail_rows: np.ndarray  # where each is in the snapshot (stable: time order kept)
    career_keys: np.ndarray
    career_rows: np.ndarray

    @classmethod
    def of(cls, key: KeyState) -> _KeyIndex:
        tail, career = key.tail_keys.astype(str), key.career_keys.astype(str)
        tail_rows = np.argsort(tail, kind="stable")
        career_rows = np.argsort(career, kind="stable")
        return cls(tail[tail_rows], tail_rows, career[career_rows], career_rows)

    def entries(self, key: KeyState, wanted: np.ndarray) -> KeyState:
        tail = _rows_of(self.tail_keys, self.tail_rows, wanted)
        career = _rows_of(self.career_keys, self.career_rows, wanted)
        changes: dict[str, Any] = {}
        for part in fields(key):
            rows = (
                tail
                if part.name.startswith("tail_")
                else career
                if part.name.startswith("career_")
                else None
            )
            value = getattr(key, part.name)
            if rows is not None:
                changes[part.name] = (
                    {name: column[rows] for name, column in value.items()}
                    if isinstance(value, dict)
                    else value[rows]
                )
        return replace(key, **changes)


def _rows_of(keys: np.ndarray, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The snapshot positions of the wanted keys' entries, in the snapshot's order."""
    low = np.searchsorted(keys, wanted, side="left")
    high = np.searchsorted(keys, wanted, side="right")
    found = [rows[a:b] for a, b in zip(low.tolist(), high.tolist(), strict=True) if b > a]
    return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def card_state(state: State, table: Table, plan: Plan) -> State:
    """The snapshot's entries for the card's keys only: what compute() reads for the card's
    rows, the same features from a fraction of the work."""
    cached = _indexes.get(id(state))
    if cached is None or cached[0] is not state:
        cached = (state, {name: _KeyIndex.of(key) for name, key in state.keys.items()})
        if len(_indexes) >= INDEXED:
            _indexes.pop(next(iter(_indexes)))
        _indexes[id(state)] = cached  # the state is held: its id is not reused meanwhile
    index = cached[1]
    keys = {}
    for name, key in state.keys.items():
        by = plan.history_keys[name].by if name in plan.history_keys else None
        if by is None or name not in index:
            keys[name] = key
            continue
        wanted = np.unique(joined_keys(table, by))
        keys[name] = index[name].entries(key, wanted[wanted != ""])
    return State(keys=keys, meta=state.meta)


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
        raise CardError(f"unknown fields {some(unknown)}: not columns of the model's data")
    after_the_off = {spec.target, *spec.post_race}
    needed = [n for n in plan.numeric_inputs if n not in after_the_off]
    for i, row in enumerate(card):
        lacking = [n for n in needed if n not in row]
        if lacking:
            raise CardError(f"card row {i + 1} lacks {lacking[:10]} (send null when unknown)")


def card_table(
    card: list[dict[str, Any]], spec: DatasetSpec, numeric: list[str], text_keys: list[str]
) -> Table:
    """The card as the columns the features are computed from; CardError lists every
    problem of its rows."""
    problems: list[Problem] = []
    keys = {
        name: np.array([key_text(row.get(name)) for row in card], dtype=str)
        for name in dict.fromkeys(c for c in (spec.group, spec.entity, *text_keys) if c)
    }
    for key in filter(None, (spec.group, spec.entity)):
        problems += rules.missing_key(key, keys[key] == "")
    if spec.group and spec.entity:
        pair = keys[spec.group], keys[spec.entity]
        codes = _codes(pair[0]), _codes(pair[1])
        problems += rules.duplicate_entity(spec.group, spec.entity, *codes, pair)
    # A missing jockey or trainer is allowed, as offline: its features are missing.
    table: Table = {name: keys[name] for name in (spec.group, *text_keys) if name}
    if spec.time:
        raw = [row.get(spec.time) for row in card]
        table[spec.time], bad = _times(raw)
        problems += rules.not_a_time(spec.time, bad, raw)
    post_race = {spec.target, *spec.post_race}
    odds_sent = spec.odds and any(spec.odds in row for row in card)
    for name in numeric:
        if name in post_race:  # unknown before the off
            table[name] = np.full(len(card), np.nan)
            continue
        raw = [row.get(name) for row in card]
        values, bad = _numbers(raw)
        problems += rules.not_numeric(name, bad, raw)
        stored, found = rules.as_feature(name, values)  # float32, as ingestion stores it
        problems += found + (rules.invalid_odds(name, values) if name == spec.odds else [])
        table[name] = stored.astype(np.float64)
    # odds read by no feature are checked all the same
    if odds_sent and spec.odds is not None and spec.odds not in numeric:
        raw = [row.get(spec.odds) for row in card]
        values, bad = _numbers(raw)
        problems += rules.not_numeric(spec.odds, bad, raw, "odds")
        problems += rules.invalid_odds(spec.odds, values)
    if problems:
        raise CardError("; ".join(p.message for p in problems), problems)
    table[spec.target] = np.full(len(card), np.nan)
    return table


def _codes(keys: np.ndarray) -> np.ndarray:
    """Each key's number among the card's distinct keys; -1 where there is none."""
    _, codes = np.unique(keys, return_inverse=True)
    return np.where(keys == "", -1, codes.ravel())


def _numbers(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN where null; where a value is no number). A card is JSON:
    numbers or null, not text or true/false, and NaN is no JSON number (null says a value
    is unknown)."""
    if set(map(type, values)) <= {int, float, NONE}:  # the usual card: in one pass, in C
        try:
            numbers = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer past float64: the loop below
            pass
        else:
            bad = np.isnan(numbers)
            if bad.any():
                bad &= np.fromiter((v is not None for v in values), bool, len(values))
            return numbers, bad
    numbers = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float | NONE):
            bad[i] = True
        elif value is not None:
            try:
                numbers[i] = value
            except OverflowError:
                numbers[i] = np.inf if value > 0 else -np.inf
            bad[i] = np.isnan(numbers[i])
    return numbers, bad


def _times(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since 1970 UTC, where a value is no ISO 8601 time in range)."""
    micros = [_micros(value) for value in values]
    bad = np.array([m is None for m in micros], dtype=bool)
    return np.array([m or 0 for m in micros], dtype=np.int64), bad


def _iso(micros: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).isoformat()


def _micros(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # e.g. 9999-12-31T23:59-12:00, past year 9999 in UTC: OverflowError
        delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
