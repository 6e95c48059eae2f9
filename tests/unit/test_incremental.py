"""Incremental features at the library level: the parent's snapshot plus appended rows give
what a full rebuild gives, or say why not (and the whole is built again)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gallop.features.build import FeatureSet, build_features
from gallop.features.categories import (
    MAX_CATEGORIES,
    count_categories,
    learn_vocabulary,
    merge_counts,
    vocabulary_of_counts,
)
from gallop.features.incremental import NotIncremental, extend_features
from gallop.features.parts import in_canonical_order
from gallop.features.state import KeyState, State
from gallop.ingest.validate import validate
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races


def canonical(rows: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    checked = validate(rows.astype(str), spec)
    assert checked.ok, [p.message for p in checked.problems]
    assert checked.canonical is not None
    return checked.canonical


def assert_same_features(got: pd.DataFrame, want: pd.DataFrame, features: list[str]) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    ident = [c for c in want.columns if c not in features]
    pd.testing.assert_frame_equal(got[ident], want[ident])
    for name in features:
        a, b = got[name].to_numpy(np.float32), want[name].to_numpy(np.float32)
        assert np.array_equal(a, b, equal_nan=True), name


def assert_same_state(got: State, want: State) -> None:
    assert list(got.keys) == list(want.keys)
    for name, key in want.keys.items():
        other = got.keys[name]
        assert np.array_equal(other.tail_keys.astype(str), key.tail_keys.astype(str)), name
        assert np.array_equal(other.tail_times, key.tail_times), name
        assert list(other.tail_values) == list(key.tail_values), name
        for column, values in key.tail_values.items():
            assert np.array_equal(other.tail_values[column], values, equal_nan=True), column
        assert np.array_equal(other.career_keys.astype(str), key.career_keys.astype(str)), name
        for part in ("runs", "wins", "places", "last_time"):
            assert np.array_equal(
                getattr(other, f"career_{part}"), getattr(key, f"career_{part}")
            ), (name, part)
    assert json.loads(json.dumps(got.meta)) == json.loads(json.dumps(want.meta))


def stored(state: State) -> State:
    return State.from_bytes(state.to_bytes())


def extend_or_rebuild(
    parent: FeatureSet,
    parent_rows: pd.DataFrame,
    appended: pd.DataFrame,
    whole: pd.DataFrame,
    spec: DatasetSpec,
) -> tuple[FeatureSet, pd.DataFrame, str]:
    """What the features service does with an append (no corrections): the whole's rows."""
    try:
        built = extend_features(stored(parent.state), parent.manifest, appended, spec)
    except NotIncremental as exc:
        full = build_features(whole, spec)
        reason = str(exc)
        return full, full.frame, "out of time order" if "out of time order" in reason else reason
    rows = in_canonical_order(
        pd.concat([parent_rows, built.frame], ignore_index=True), built.manifest
    )
    return built, rows, ""


# -- categories -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, MAX_CATEGORIES + 300), st.integers(0, 50)), max_size=2500),
    st.lists(st.tuples(st.integers(0, MAX_CATEGORIES + 300), st.integers(0, 80)), max_size=400),
)
def test_counts_learn_the_vocabulary_of_the_whole(
    first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> None:
    # GIVEN two sets of rows' texts and times (more distinct texts than a vocabulary holds)
    a = np.array([f"c{v}" for v, _ in first] + [""], dtype=str)
    a_times = np.array([t for _, t in first] + [0], dtype=np.int64)
    b = np.array([f"c{v}" for v, _ in second], dtype=str)
    b_times = np.array([t for _, t in second], dtype=np.int64)
    # WHEN the vocabulary is learnt from their counts alone
    merged = merge_counts(count_categories(a, a_times), count_categories(b, b_times))
    # THEN it is the vocabulary of all the rows
    whole = learn_vocabulary(np.concatenate([a, b]), np.concatenate([a_times, b_times]))
    assert vocabulary_of_counts(*merged) == whole


# -- the snapshot's encoding ------------------------------------------------------------


def test_a_snapshot_reads_back_as_it_was_written(races_spec: DatasetSpec) -> None:
    runners, _ = generate_races(40, seed=5)
    built = build_features(canonical(runners, races_spec), races_spec)
    data = built.state.to_bytes()
    assert data[:2] == b"PK"  # an .npz: numpy alone reads it
    assert_same_state(State.from_bytes(data), built.state)


# -- incremental == full ----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    races=st.integers(30, 70),
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    late=st.booleans(),
    new_course=st.booleans(),
)
def test_appends_equal_a_full_rebuild(
    races_spec: DatasetSpec, seed: int, races: int, chunks: list[int], late: bool, new_course: bool
) -> None:
    # GIVEN races split into a stored history and appended chunks (in time order, or with a
    # late race held back from the history, or bringing a course never seen)
    runners, _ = generate_races(races + sum(chunks), seed=seed)
    ids = list(dict.fromkeys(runners["race_id"]))
    chunk_of = {race: 0 for race in ids[:races]}
    start = races
    for i, size in enumerate(chunks, start=1):
        chunk_of.update({race: i for race in ids[start : start + size]})
        start += size
    if late:
        chunk_of[ids[races // 2]] = 1  # dated before the newest stored race
    if new_course:
        last = ids[-1]
        runners.loc[runners["race_id"] == last, "course"] = "atlantis"
    part = runners["race_id"].map(chunk_of)

    whole_raw = runners[part == 0]
    full = build_features(canonical(whole_raw, races_spec), races_spec)
    current, rows = full, full.frame
    for i in range(1, len(chunks) + 1):
        appended_raw = runners[part == i]
        whole_raw = runners[part <= i]
        whole = canonical(whole_raw, races_spec)
        # WHEN the chunk is appended
        current, rows, reason = extend_or_rebuild(
            current, rows, canonical(appended_raw, races_spec), whole, races_spec
        )
        # THEN every row's features and the snapshot are a full rebuild's
        full = build_features(whole, races_spec)
        assert_same_features(rows, full.frame, full.plan.features)
        assert_same_state(stored(current.state), full.state)
        # AND the snapshot was extended exactly when nothing forbids it
        assert reason == expected_reason(runners[part < i], appended_raw, races_spec), reason
        if late and i == 1:
            assert reason


HISTORY_KEYS = (["horse_id"], ["jockey_id"], ["trainer_id"], ["jockey_id", "trainer_id"])


def _first_seen_order(rows: pd.DataFrame, column: str) -> list[str]:
    """A column's texts by the time each is first seen, then by text (pandas, row by row)."""
    timed = rows.assign(
        t=pd.to_datetime(rows["race_time"], utc=True), text=rows[column].astype(str)
    )
    first = timed[timed["text"] != ""].groupby("text")["t"].min().reset_index()
    return first.sort_values(["t", "text"])["text"].tolist()


def expected_reason(stored_raw: pd.DataFrame, appended: pd.DataFrame, spec: DatasetSpec) -> str:
    """Why the shipped spec's features of `appended` cannot extend `stored_raw`'s, found
    the slow way: the order of first appearance of a category's texts (their codes) no
    longer beginning with the stored rows' order, or a key with stored history at or after
    an appended row of it."""
    for column in spec.categorical:
        before = _first_seen_order(stored_raw, column)
        if _first_seen_order(pd.concat([stored_raw, appended]), column)[: len(before)] != before:
            return f"the vocabulary of {column!r} changes with the appended rows"
    for by in HISTORY_KEYS:
        last = stored_raw.groupby(by)["race_time"].max().rename("last").reset_index()
        joined = appended.merge(last, on=by)
        if (pd.to_datetime(joined["race_time"]) <= pd.to_datetime(joined["last"])).any():
            return "out of time order"
    return ""


def test_an_append_in_time_order_is_built_from_the_snapshot(races_spec: DatasetSpec) -> None:
    # GIVEN 80 races stored (every course, going, jockey and trainer seen) and 5 more
    runners, _ = generate_races(85, seed=2)
    ids = list(dict.fromkeys(runners["race_id"]))
    stored_rows = runners[runners["race_id"].isin(ids[:80])]
    parent = build_features(canonical(stored_rows, races_spec), races_spec)
    appended = canonical(runners[runners["race_id"].isin(ids[80:])], races_spec)
    # WHEN they are appended
    built = extend_features(stored(parent.state), parent.manifest, appended, races_spec)
    # THEN only the new rows are computed, and they with the stored rows equal a rebuild
    assert len(built.frame) == len(appended)
    full = build_features(canonical(runners, races_spec), races_spec)
    rows = in_canonical_order(pd.concat([parent.frame, built.frame]), built.manifest)
    assert_same_features(rows, full.frame, full.plan.features)
    assert_same_state(built.state, full.state)
    assert built.manifest["rows"] == len(full.frame)
    assert built.manifest["data_end"] == full.manifest["data_end"]
    assert built.manifest["entities"] == full.manifest["entities"]
    assert built.manifest["reference"] == parent.manifest["reference"]


def test_a_snapshot_of_another_spec_is_not_extended(races_spec: DatasetSpec) -> None:
    runners, _ = generate_races(30, seed=4)
    parent = build_features(canonical(runners, races_spec), races_spec)
    other = races_spec.model_copy(update={"name": "other-races"})
    parent.state.meta["spec_hash"] = "elsewhere"
    with pytest.raises(NotIncremental, match="another feature spec"):
        extend_features(parent.state, parent.manifest, canonical(runners, other), other)


def test_a_snapshot_keeps_any_text_and_tail_keys_without_careers() -> None:
    # GIVEN keys in any script, and a tail key the careers do not list
    key = KeyState(
        tail_keys=np.array(["Zoë", "Zoë", "ødegaard"]),
        tail_times=np.array([1, 2, 3], dtype=np.int64),
        tail_values={"position": np.array([1.0, np.nan, 3.0])},
        career_keys=np.array(["Zoë", "a"]),
        career_runs=np.array([2.0, 1.0]),
        career_wins=np.array([1.0, 0.0]),
        career_places=np.array([2.0, 0.0]),
        career_last_time=np.array([2, 0], dtype=np.int64),
    )
    plain = KeyState(**{**vars(key), "tail_keys": np.array(["a"]), "tail_times": np.array([0])})
    plain.tail_values = {"position": np.array([2.0])}
    state = State(keys={"horse_id": key, "jockey_id": plain}, meta={"note": "ü"})
    # WHEN it is stored and read back THEN it is the same
    assert_same_state(stored(state), state)
