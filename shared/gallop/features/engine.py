"""The feature engine: numpy only, so the predict path can run it without pandas.

`compute(rows, plan, state)` computes the plan's outputs for `rows` given the entity
history in `state` (None: no history before these rows) and returns the state as of
the end of `rows`. Offline that is the whole data with no state; online it is a race
card with the snapshot of the history before it. One code path serves both, so a
card's row equals the row the offline path would have produced for that race.

Entity history is anchored at the start of each (key, time) block: a row sees only
rows of its key at strictly earlier times, so runners of one race (same time) never
see each other's results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gallop.features.plan import FIELD_SIZE, HistoryKey, Plan
from gallop.features.spec import (
    Career,
    Interaction,
    Relative,
    Rolling,
    SinceLast,
    key_list,
    key_name,
)
from gallop.features.state import KeyState, State

Table = dict[str, np.ndarray]
MICROS = {"days": 86_400e6, "hours": 3_600e6}
KEY_SEPARATOR = "\x1f"


class StateAheadError(ValueError):
    """Rows dated at or before the history already in the state."""


@dataclass(frozen=True)
class Roles:
    group: str | None
    time: str | None
    target: str
    target_higher_is_better: bool  # descending relevance, binary; not finishing position
    places: int
    binary: bool = False


def compute(rows: Table, plan: Plan, roles: Roles, state: State | None) -> tuple[Table, State]:
    columns: Table = dict(rows)
    groups = _codes(rows[roles.group]) if roles.group else None
    results = _results(rows[roles.target], groups, roles)
    layouts: dict[str, _Layout] = {}
    new_state = State(keys={})

    for node in plan.nodes:
        entry = node.entry
        if entry is None:  # field size
            assert groups is not None
            columns[FIELD_SIZE] = np.bincount(groups)[groups].astype(np.float64)
        elif isinstance(entry, Interaction):
            columns[node.outputs[0]] = _interaction(entry, columns)
        elif isinstance(entry, Relative):
            assert groups is not None
            columns.update(_relative(entry, columns[entry.column], groups))
        else:
            key = plan.history_keys["|".join(key_list(entry.by))]
            if key.name not in layouts:
                old = state.keys.get(key.name) if state else None
                layouts[key.name] = _Layout(key, rows, roles, old)
            columns.update(_history(entry, layouts[key.name], columns, results))

    for name in plan.history_keys:  # each has at least one node, hence a layout
        new_state.keys[name] = layouts[name].advance(columns, results)
    return {name: columns[name] for name in plan.features}, new_state


# -- race-level ------------------------------------------------------------------------


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].reshape(-1)


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """For rows sorted by `keys`: each row's position of the first row with its keys."""
    n = len(keys[0])
    changed = np.zeros(n, dtype=bool)
    if n:
        changed[0] = True
    for key in keys:
        changed[1:] |= key[1:] != key[:-1]
    return np.maximum.accumulate(np.where(changed, np.arange(n), 0)) if n else np.zeros(0, np.int64)


def group_range(groups: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the lowest and highest non-NaN value (+inf / -inf when there is none)."""
    size = int(groups.max()) + 1 if len(groups) else 0
    low, high = np.full(size, np.inf), np.full(size, -np.inf)
    np.fmin.at(low, groups, x)
    np.fmax.at(high, groups, x)
    return low, high


def rank_within(groups: np.ndarray, x: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """1 = best within each group; ties share the better rank; NaN stays NaN."""
    v = -x if higher_is_better else x
    idx = np.flatnonzero(~np.isnan(v))
    order = idx[np.lexsort((v[idx], groups[idx]))]
    g, vals = groups[order], v[order]
    rank = np.full(len(x), np.nan)
    rank[order] = run_starts(g, vals) - run_starts(g) + 1
    return rank


def _results(target: np.ndarray, groups: np.ndarray | None, roles: Roles) -> Table:
    """won / placed per row (NaN where the result is unknown, as on a race card)."""
    unknown = np.isnan(target)
    if roles.binary or groups is None:  # a positive is a win (and a place), race or not
        won = np.where(unknown, np.nan, (target == 1).astype(np.float64))
        return {"won": won, "placed": won}
    rank = rank_within(groups, target, roles.target_higher_is_better)
    low, high = group_range(groups, target)
    ordered = (high > low)[groups]  # every runner alike (all relevance 0): nobody won
    won = np.where(unknown, np.nan, ((rank == 1) & ordered).astype(np.float64))
    placed = np.where(unknown, np.nan, ((rank <= roles.places) & ordered).astype(np.float64))
    return {"won": won, "placed": placed}


def _interaction(entry: Interaction, columns: Table) -> np.ndarray:
    left, right = columns[entry.left], columns[entry.right]
    with np.errstate(divide="ignore", invalid="ignore"):
        if entry.kind == "ratio":
            return np.where(right == 0, np.nan, left / right)
        if entry.kind == "difference":
            return left - right
        return left * right


def _relative(entry: Relative, x: np.ndarray, groups: np.ndarray) -> Table:
    size = int(groups.max()) + 1 if len(groups) else 0
    valid = ~np.isnan(x)
    count = np.bincount(groups, weights=valid.astype(np.float64), minlength=size)
    total = np.bincount(groups, weights=np.where(valid, x, 0.0), minlength=size)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, total / count, np.nan)[groups]
        spread = np.bincount(groups, weights=np.where(valid, (x - mean) ** 2, 0.0), minlength=size)
        std = np.sqrt(np.where(count > 0, spread / count, np.nan))[groups]
    low, high = group_range(groups, x)
    spread_out = (high > low)[groups]  # an all-equal field has no spread, whatever rounding says
    best = np.where(
        np.isinf(high if entry.higher_is_better else low),
        np.nan,
        high if entry.higher_is_better else low,
    )[groups]
    out: Table = {}
    for kind, name in zip(entry.kinds, entry.outputs(), strict=True):
        if kind == "rank":
            out[name] = rank_within(groups, x, entry.higher_is_better)
        elif kind == "zscore":
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = np.where(spread_out, (x - mean) / std, np.where(valid, 0.0, np.nan))
        elif kind == "diff_mean":
            out[name] = x - mean
        elif kind == "log_implied":
            priced = valid & (x > 0)
            inverse = np.where(priced, 1.0 / np.where(priced, x, 1.0), 0.0)
            book = np.bincount(groups, weights=inverse, minlength=size)[groups]
            with np.errstate(divide="ignore"):
                out[name] = np.where(priced, np.log(inverse / book), np.nan)
        else:
            out[name] = x - best
    return out


# -- entity history --------------------------------------------------------------------


def joined_keys(rows: Table, by: tuple[str, ...]) -> np.ndarray:
    parts = [np.asarray(rows[b]).astype(str) for b in by]
    joined = parts[0]
    for part in parts[1:]:
        joined = np.char.add(np.char.add(joined, KEY_SEPARATOR), part)
    missing = np.zeros(len(joined), dtype=bool)
    for part in parts:
        missing |= part == ""
    return np.where(missing, "", joined)


class _Layout:
    """The rows of one history key (the state's tail, then the new rows), sorted by key
    and time, with where each key and each (key, time) block starts."""

    def __init__(self, key: HistoryKey, rows: Table, roles: Roles, old: KeyState | None) -> None:
        assert roles.time is not None
        self.key = key
        self.old = old or KeyState.empty(key)
        new_keys = joined_keys(rows, key.by)
        new_times = np.asarray(rows[roles.time], dtype=np.int64)
        self.n_tail = len(self.old.tail_keys)
        self.n_new = len(new_keys)
        all_keys = np.concatenate([self.old.tail_keys.astype(str), new_keys])
        self.uniques, codes = np.unique(
            np.concatenate([all_keys, self.old.career_keys.astype(str)]), return_inverse=True
        )
        codes = codes.reshape(-1)
        self.career_codes = codes[len(all_keys) :]
        codes = codes[: len(all_keys)]
        times = np.concatenate([self.old.tail_times, new_times])
        self.base = self._base_totals()
        self._check_not_behind(codes[self.n_tail :], new_times, new_keys)

        self.order = np.lexsort((times, codes))
        self.codes, self.times = codes[self.order], times[self.order]
        pos = np.arange(len(self.order))
        self.key_start = run_starts(self.codes)
        self.block_start = run_starts(self.codes, self.times)  # (key, time): one race's rows
        self.is_new = self.order >= self.n_tail
        where = np.empty(len(self.order), dtype=np.int64)
        where[self.order] = pos
        self.new_pos = where[self.n_tail :]  # sorted position of each new row
        self.known = new_keys != ""

    def _base_totals(self) -> dict[str, np.ndarray]:
        size = len(self.uniques)
        base = {name: np.zeros(size) for name in ("runs", "wins", "places")}
        base["last_time"] = np.full(size, np.iinfo(np.int64).min)
        for name in ("runs", "wins", "places", "last_time"):
            base[name][self.career_codes] = getattr(self.old, f"career_{name}")
        if self.n_tail:  # the tail dates keys that keep no career counts
            tail_codes = np.searchsorted(self.uniques, self.old.tail_keys.astype(str))
            np.maximum.at(base["last_time"], tail_codes, self.old.tail_times)
        return base

    def _check_not_behind(self, codes: np.ndarray, times: np.ndarray, keys: np.ndarray) -> None:
        behind = (times <= self.base["last_time"][codes]) & (keys != "")
        if behind.any():
            sample = sorted(set(keys[behind].tolist()))[:5]
            raise StateAheadError(
                f"{int(behind.sum())} row(s) are dated at or before the history already held for "
                f"{self.key.name} {sample}; features can only be built forward in time"
            )

    def window(self, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The previous `size` values of each new row's key, most recent first."""
        sorted_values = values[self.order]
        anchors = self.block_start[self.new_pos]
        starts = self.key_start[self.new_pos]
        idx = anchors[:, None] - np.arange(1, size + 1)[None, :]
        valid = idx >= starts[:, None]
        gathered = np.where(valid, sorted_values[np.clip(idx, 0, None)], np.nan)
        return gathered, valid

    def before_block(self, new_values: np.ndarray) -> np.ndarray:
        """For each new row, the sum of `new_values` (NaN counts 0) over the new rows of its
        key at earlier times."""
        padded = np.concatenate([np.zeros(self.n_tail), np.nan_to_num(new_values)])
        ordered = np.where(self.is_new, padded[self.order], 0.0)
        exclusive = np.concatenate([[0.0], np.cumsum(ordered)])
        anchors = self.block_start[self.new_pos]
        starts = self.key_start[self.new_pos]
        return exclusive[anchors] - exclusive[starts]

    def padded(self, new_values: np.ndarray, column: str) -> np.ndarray:
        tail = self.old.tail_values.get(column)
        if tail is None:
            tail = np.full(self.n_tail, np.nan)
        return np.concatenate([tail, new_values.astype(np.float64)])

    def advance(self, columns: Table, results: Table) -> KeyState:
        """The history of this key as of the end of the new rows."""
        keep_known = np.concatenate([np.ones(self.n_tail, bool), self.known])[self.order]
        codes_new = self.codes[self.is_new & keep_known]
        size = len(self.uniques)
        runs = self.base["runs"] + np.bincount(codes_new, minlength=size)
        totals = {"runs": runs}
        for name, source in (("wins", "won"), ("places", "placed")):
            value = np.nan_to_num(results[source][self.order[self.is_new] - self.n_tail])
            keep = keep_known[self.is_new]
            totals[name] = self.base[name] + np.bincount(
                codes_new, weights=value[keep], minlength=size
            )
        last_time = self.base["last_time"].copy()
        np.maximum.at(last_time, self.codes[keep_known], self.times[keep_known])
        present = (runs > 0) | (last_time > np.iinfo(np.int64).min)
        present &= self.uniques != ""

        tail_idx = np.zeros(0, dtype=np.int64)
        if self.key.window:
            pos = np.arange(len(self.order))
            in_key = np.bincount(self.codes, minlength=size)[self.codes]
            from_end = in_key - (pos - self.key_start)
            tail_idx = np.flatnonzero((from_end <= self.key.window) & keep_known)
        tail_values = {
            column: self.padded(columns[column], column)[self.order][tail_idx]
            for column in self.key.rolled
        }
        return KeyState(
            tail_keys=self.uniques[self.codes[tail_idx]],
            tail_times=self.times[tail_idx],
            tail_values=tail_values,
            career_keys=self.uniques[present],
            career_runs=totals["runs"][present],
            career_wins=totals["wins"][present],
            career_places=totals["places"][present],
            career_last_time=last_time[present],
        )


def _history(
    entry: Rolling | Career | SinceLast, layout: _Layout, columns: Table, results: Table
) -> Table:
    known = layout.known
    out: Table = {}
    if isinstance(entry, Rolling):
        values = layout.padded(columns[entry.column], entry.column)
        window, _ = layout.window(values, max(entry.windows))
        present = ~np.isnan(window)
        for w in entry.windows:
            part, has = window[:, :w], present[:, :w]
            count = has.sum(axis=1).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats = {
                    "count": count,
                    "mean": np.where(count > 0, np.where(has, part, 0).sum(axis=1) / count, np.nan),
                    "min": np.where(count > 0, np.where(has, part, np.inf).min(axis=1), np.nan),
                    "max": np.where(count > 0, np.where(has, part, -np.inf).max(axis=1), np.nan),
                    "last": window[:, 0],
                }
            for stat in entry.stats:
                out[f"{key_name(entry.by)}_{entry.column}_{stat}_{w}"] = stats[stat]
    elif isinstance(entry, Career):
        codes = layout.codes[layout.new_pos]
        runs = layout.base["runs"][codes] + layout.before_block(np.ones(layout.n_new))
        wins = layout.base["wins"][codes] + layout.before_block(results["won"])
        places = layout.base["places"][codes] + layout.before_block(results["placed"])
        prior = entry.prior_runs * entry.prior_rate
        stats = {
            "runs": runs,
            "wins": wins,
            "win_rate": (wins + prior) / (runs + entry.prior_runs),
            "place_rate": (places + prior) / (runs + entry.prior_runs),
        }
        for career, name in zip(entry.stats, entry.outputs(), strict=True):
            out[name] = stats[career]
    else:
        anchors = layout.block_start[layout.new_pos]
        starts = layout.key_start[layout.new_pos]
        previous = np.where(anchors > starts, layout.times[np.clip(anchors - 1, 0, None)], 0)
        now = layout.times[layout.new_pos]
        out[entry.outputs()[0]] = np.where(
            anchors > starts, (now - previous) / MICROS[entry.unit], np.nan
        )
    return {name: np.where(known, values, np.nan) for name, values in out.items()}
