"""An appended version's features from its parent's snapshot plus the appended rows.

The engine already computes the features of new rows given the entity history before
them and returns the history after them (`gallop.features.engine.compute`), and a race's
field-level features need only its own rows, which an append brings whole. So the
features of the appended rows, and the snapshot at the end of the whole, are those a
full rebuild computes, provided that:

- nothing already held is rewritten (no corrections: the caller checks rows_replaced);
- no appended row is dated at or before the history held for one of its keys (the
  engine raises StateAheadError: a late result would change the features of the stored
  rows after it);
- the categorical vocabularies of the whole begin with the parent's (a vocabulary is in
  order of first appearance, so texts first seen in later rows take the next codes; a
  text first seen in a late row, or the frequency cap changing its members, would move
  the codes of stored rows). The snapshot keeps each categorical column's counts and
  first times, so the whole's vocabulary is learnt exactly here, without reading the
  whole.

When one fails `extend_features` raises NotIncremental with the reason, and the caller
builds the whole again instead: never a feature that differs from a full rebuild.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gallop.features.build import (
    FeatureSet,
    feature_frame,
    feature_manifest,
    snapshot_meta,
    table_from_frame,
)
from gallop.features.categories import (
    Counts,
    count_categories,
    encode,
    merge_counts,
    vocabulary_of_counts,
)
from gallop.features.engine import StateAheadError, compute, joined_keys
from gallop.features.plan import Plan, build_plan
from gallop.features.roles import roles_for
from gallop.features.state import KeyState, State
from gallop.manifests import FeatureManifest
from gallop.spec import DatasetSpec


class NotIncremental(Exception):
    """Why an append's features cannot be built from its parent's (a full rebuild can)."""


def extend_features(
    parent: State,
    parent_manifest: FeatureManifest,
    appended: pd.DataFrame,
    spec: DatasetSpec,
) -> FeatureSet:
    """The appended rows' features (`frame` holds those rows only, in their canonical
    order), the snapshot as of the end of the whole and the whole's manifest.

    The manifest's reference statistics are the parent's, unchanged: exact deciles of
    the whole would need every stored row read again, which is what this path exists to
    avoid, and one day's rows barely move a million rows' deciles. They describe the
    rows of the full build the chain of appends started from (the drift reference of a
    model trained on any version of the chain is the same).
    """
    meta = parent.meta
    if meta.get("spec_hash") != spec.spec_hash:
        raise NotIncremental("the parent's snapshot was built under another feature spec")
    if "category_counts" not in meta:
        raise NotIncremental("the parent's snapshot keeps no category counts")
    if not len(appended):
        raise NotIncremental("no appended rows")
    numeric = [c for c in appended.columns if appended[c].dtype.kind == "f" and c != spec.target]
    if numeric != meta["data_numeric"]:
        raise NotIncremental("the appended rows' numeric columns are not the parent's")

    plan = build_plan(spec, numeric)
    table = table_from_frame(appended, spec, plan)
    vocabularies, counts = _whole_vocabularies(meta, table, plan.categorical, spec.time)
    touched, untouched = split_history(parent, table, plan)
    try:
        outputs, state = compute(table, plan, roles_for(spec), touched)
    except StateAheadError as exc:
        raise NotIncremental(f"rows out of time order: {exc}") from exc
    state = State(
        keys={name: merge_history(untouched[name], key) for name, key in state.keys.items()}
    )
    for name, vocabulary in vocabularies.items():
        outputs[name] = encode(table[name], vocabulary)

    frame = feature_frame(appended, outputs, spec, plan)
    data_end = meta["data_end"]
    if spec.time:
        newest = int(table[spec.time].max())
        data_end = newest if data_end is None else max(int(data_end), newest)
    state.meta = snapshot_meta(spec, plan, numeric, data_end, vocabularies, counts)
    manifest = feature_manifest(
        spec,
        plan,
        state,
        rows=int(parent_manifest["rows"]) + len(frame),
        reference=parent_manifest["reference"],
    )
    return FeatureSet(frame, plan, state, manifest)


def _whole_vocabularies(
    meta: dict[str, Any], table: dict[str, np.ndarray], categorical: list[str], time: str | None
) -> tuple[dict[str, list[str]], dict[str, Counts]]:
    """Each categorical column's vocabulary and counts over the parent's rows and the
    appended ones; NotIncremental when a vocabulary does not begin with the parent's (the
    codes of stored rows would change)."""
    vocabularies: dict[str, list[str]] = {}
    counts: dict[str, Counts] = {}
    times = table[time] if time else None
    for name in categorical:
        kept = meta["category_counts"].get(name)
        if kept is None or "first" not in kept:
            raise NotIncremental(f"the parent's snapshot keeps no counts of {name!r}")
        held = (
            np.asarray(kept["values"], dtype=str),
            np.asarray(kept["counts"], dtype=np.int64),
            np.asarray(kept["first"], dtype=np.int64),
        )
        counts[name] = merge_counts(held, count_categories(table[name], times))
        vocabularies[name] = vocabulary_of_counts(*counts[name])
        before = meta["categories"].get(name) or []
        if vocabularies[name][: len(before)] != before:
            raise NotIncremental(f"the vocabulary of {name!r} changes with the appended rows")
    return vocabularies, counts


# -- the keys an append touches ----------------------------------------------------------
#
# The engine sorts every history row it is given. Given only the history of the keys the
# appended rows have, its cost follows the append, not the million rows behind it; the
# rest of the history is the parent's as it was, put back in key order afterwards. A
# snapshot keeps each key's careers sorted by key and its tail sorted by key then time
# (the engine's order), and keys are disjoint between the two sides, so putting back is
# a merge of sorted arrays, and the result is the order a full rebuild gives.


def split_history(
    parent: State, table: dict[str, np.ndarray], plan: Plan
) -> tuple[State, dict[str, KeyState]]:
    """The parent's history of the keys in `table`, and of every other key."""
    touched = State(keys={}, meta=parent.meta)
    untouched: dict[str, KeyState] = {}
    for name, key in plan.history_keys.items():
        old = parent.keys.get(name) or KeyState.empty(key)
        keys = np.unique(joined_keys(table, key.by))
        in_tail = _rows_of(old.tail_keys.astype(str), keys)
        in_career = _rows_of(old.career_keys.astype(str), keys)
        touched.keys[name] = _select(old, in_tail, in_career)
        untouched[name] = _select(old, ~in_tail, ~in_career)
    return touched, untouched


def merge_history(rest: KeyState, new: KeyState) -> KeyState:
    """Two key states of disjoint keys as one, in key order (tail: then time)."""
    tail = _merged_at(rest.tail_keys.astype(str), new.tail_keys.astype(str))
    career = _merged_at(rest.career_keys.astype(str), new.career_keys.astype(str))
    return KeyState(
        tail_keys=_merge(rest.tail_keys.astype(str), new.tail_keys.astype(str), tail),
        tail_times=_merge(rest.tail_times, new.tail_times, tail),
        tail_values={
            column: _merge(rest.tail_values[column], values, tail)
            for column, values in new.tail_values.items()
        },
        career_keys=_merge(rest.career_keys.astype(str), new.career_keys.astype(str), career),
        **{
            f"career_{part}": _merge(
                getattr(rest, f"career_{part}"), getattr(new, f"career_{part}"), career
            )
            for part in ("runs", "wins", "places", "last_time")
        },
    )


def _rows_of(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which rows of `sorted_keys` (sorted) hold one of `keys`."""
    if len(sorted_keys) and not np.all(sorted_keys[:-1] <= sorted_keys[1:]):
        raise NotIncremental("the parent's snapshot is not in key order")
    starts = np.searchsorted(sorted_keys, keys, side="left")
    ends = np.searchsorted(sorted_keys, keys, side="right")
    edges = np.zeros(len(sorted_keys) + 1, dtype=np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    return np.cumsum(edges[:-1]) > 0


def _select(state: KeyState, tail: np.ndarray, career: np.ndarray) -> KeyState:
    return KeyState(
        tail_keys=state.tail_keys[tail],
        tail_times=state.tail_times[tail],
        tail_values={column: values[tail] for column, values in state.tail_values.items()},
        career_keys=state.career_keys[career],
        **{
            f"career_{part}": getattr(state, f"career_{part}")[career]
            for part in ("runs", "wins", "places", "last_time")
        },
    )


def _merged_at(rest: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Where each of `new`'s rows stands among both (sorted, disjoint keys)."""
    return np.searchsorted(rest, new, side="left") + np.arange(len(new))


def _merge(rest: np.ndarray, new: np.ndarray, at: np.ndarray) -> np.ndarray:
    out = np.empty(len(rest) + len(new), dtype=np.result_type(rest.dtype, new.dtype))
    from_new = np.zeros(len(out), dtype=bool)
    from_new[at] = True
    out[from_new] = new
    out[~from_new] = rest
    return out
