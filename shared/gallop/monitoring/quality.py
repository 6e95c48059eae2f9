"""Live quality: what a model served, scored against the results that followed.

Captured rows (gallop.monitoring.capture) are joined with a dataset version's results by
(group, entity) for grouped tasks, or by entity (the row id the client sent) for the
others. Nothing is guessed: every captured row ends in exactly one bucket of
`JoinCounts`, and only `scored` rows reach a metric. A race counts only whole: when one
of its captured runners has no result (or a key is doubtful), the whole race is left
out. The figures come from gallop.training.metrics, the functions the training report's
held-out figures come from, so live and training numbers mean the same thing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from gallop.models.stack import group_starts
from gallop.monitoring.capture import CapturedRows
from gallop.spec import DatasetSpec, Task
from gallop.training.metrics import (
    binary_metrics,
    ranking_metrics,
    regression_metrics,
    reliability,
)
from gallop.training.outcomes import race_results

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gallop.manifests import FeatureManifest
    from gallop.metadata.models import Dataset, DatasetVersion, RegisteredModel
    from gallop.storage import Store

TOP1_ROI = "top1_roi"  # 1 unit on the top-ranked runner of each race at the market's odds

# Each captured row's fate, in the order a race's rows take the first that applies.
NO_KEY = "no_key"  # no group or entity id to join by
AMBIGUOUS = "ambiguous"  # its key was captured, or has results, more than once
PENDING = "pending"  # no result for its race (or row) yet: the race is not finished
WITHOUT_RESULT = "without_result"  # its race has results, but not for every captured runner
SCORED = "scored"


class CannotJoin(ValueError):
    """The dataset names no column to join captured rows with results by."""


@dataclass(frozen=True)
class JoinCounts:
    """Captured rows by fate; they add up to `captured`."""

    captured: int = 0
    # Served again later (a card asked for again as the odds moved): the last answer for a
    # race (for ungrouped tasks, a row id) is the one judged.
    repeated: int = 0
    scored: int = 0
    no_key: int = 0
    ambiguous: int = 0
    pending: int = 0
    without_result: int = 0
    # Scored races whose results hold runners nobody asked about: no race log loss for
    # them (the winner's probability was shared with fewer runners).
    partial_races: int = 0


@dataclass(frozen=True)
class DayQuality:
    day: str  # YYYY-MM-DD, the UTC day the race (or row) was served
    groups: int  # races scored (rows, for ungrouped tasks)
    rows: int
    metrics: dict[str, float]  # NaN where the day's rows cannot say (one class only...)


@dataclass(frozen=True)
class LiveQuality:
    task: str
    days: list[DayQuality]
    counts: JoinCounts
    # Reliability bins of the served probability over every scored row (ranking: the win
    # probability, of decided races), for the monitoring page; empty for regression.
    calibration: list[dict[str, float]] = field(default_factory=list)


def read_results(store: Store, version: DatasetVersion) -> pd.DataFrame:
    """A dataset version's rows from its parts (the join needs no canonical order, so
    they are not sorted again)."""
    from gallop.ingest.canonical import read_parts

    if not version.parts and not version.data_key:
        raise ValueError(f"version {version.version_id} has no data to read")
    return read_parts(store.get_bytes, version.parts or [cast(str, version.data_key)])


def record_live(
    engine: Engine,
    data_store: Store,
    model: RegisteredModel,
    captured: CapturedRows,
    since_day: str | None = None,
    read: dict[str, pd.DataFrame] | None = None,
) -> LiveQuality:
    """Score a model's captured rows against the newest VALID version of its dataset and
    store the figures of every day they cover from `since_day` on (a day is replaced
    whole: pass all of its captured rows, e.g. read_captured(..., since_day)). Capture
    files are by arrival day: a row served just before `since_day` may be among them,
    and would make a figure of its day out of that row alone."""
    from gallop.metadata import repo
    from gallop.metadata.db import session_scope
    from gallop.metadata.models import Dataset

    with session_scope(engine) as session:
        dataset = session.get(Dataset, model.dataset_id)
    if dataset is None:
        raise CannotJoin(f"model {model.model_id} names no dataset")
    spec = repo.spec_of(dataset)
    quality = live_quality(captured, newest_results(engine, data_store, dataset, read), spec)
    days = [d for d in quality.days if since_day is None or d.day >= since_day]
    repo.record_live_quality(engine, model.model_id, days)
    return quality


def newest_results(
    engine: Engine,
    data_store: Store,
    dataset: Dataset,
    read: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The results captured rows are scored against: the dataset's newest VALID version's
    (none yet: an empty table, and every row waits). `read`: versions read already, by
    id (a version's data never changes), so that one monitor run reads each once."""
    from gallop.metadata import repo

    spec = repo.spec_of(dataset)
    version = repo.newest_valid_version(engine, dataset)
    if version is None:
        return pd.DataFrame(columns=[c for c in (spec.group, spec.entity, spec.target) if c])
    if read is None:
        return read_results(data_store, version)
    if version.version_id not in read:
        read[version.version_id] = read_results(data_store, version)
    return read[version.version_id]


def live_quality(captured: CapturedRows, results: pd.DataFrame, spec: DatasetSpec) -> LiveQuality:
    """Per UTC day of serving, the metrics of the captured rows whose results are known."""
    joined, counts = scored_rows(captured, results, spec)
    if joined.empty:
        return LiveQuality(spec.task.value, [], counts)
    grouped = spec.group is not None
    days = [
        _day_quality(str(day), part, spec, grouped)
        for day, part in joined.groupby("day", sort=True)
    ]
    return LiveQuality(spec.task.value, days, counts, _calibration(joined, spec, grouped))


def scored_rows(
    captured: CapturedRows, results: pd.DataFrame, spec: DatasetSpec
) -> tuple[pd.DataFrame, JoinCounts]:
    """The join: each captured row whose result is known (a race's last serving, whole),
    with its result: columns group, entity, score, out_{output}, target (ranking: share,
    relevance), partial (its race's field holds runners not captured), day, and race (an
    int per race, rows of a race together, by day then race then serving order).
    Ungrouped tasks have group "" and one row per entity. With the counts of every fate."""
    grouped = spec.group is not None
    if not spec.entity:
        raise CannotJoin(
            f"dataset {spec.name!r} names no entity column: captured rows cannot be "
            "matched with results (declare 'entity', the runner or row id clients send)"
        )
    if spec.task is Task.RANKING and not grouped:
        raise CannotJoin(f"dataset {spec.name!r}: a ranking task needs a group column")
    every = _served_frame(captured, grouped)
    last = _last_servings(every, grouped)
    served = every[last].reset_index(drop=True)
    known = _results_frame(results, spec)
    if grouped:  # the served races' fields only: results hold the whole history
        known = known[known["group"].isin(set(served["group"].dropna()))].reset_index(drop=True)
        if spec.task is Task.RANKING:  # judged on the whole field, captured or not
            known["share"], known["relevance"] = _outcomes(known, spec)
    fate = _fates(served, known, grouped)
    joined = served[fate == SCORED].merge(known, on=["group", "entity"], how="left")
    partial = _partial_races(joined, known) if grouped else set()
    joined["partial"] = joined["group"].isin(partial)
    counts = JoinCounts(
        captured=len(every),
        repeated=int((~last).sum()),
        partial_races=len(partial),
        **{name: int((fate == name).sum()) for name in _FATES},
    )
    if joined.empty:
        return joined, counts
    joined = _in_race_order(joined, grouped)
    joined["race"] = pd.factorize(joined["group"].to_numpy(dtype=object))[0]  # ints: fast
    return joined, counts


_FATES = (SCORED, NO_KEY, AMBIGUOUS, PENDING, WITHOUT_RESULT)


# -- the join ------------------------------------------------------------------------


def _served_frame(captured: CapturedRows, grouped: bool) -> pd.DataFrame:
    n = len(captured)
    frame = pd.DataFrame(
        {
            "position": np.arange(n),
            "at": pd.to_datetime(np.asarray(captured.at), utc=True),
            "group": _texts(captured.group) if grouped else np.full(n, "", dtype=object),
            "entity": _texts(captured.entity),
            "score": np.asarray(captured.score, dtype=np.float64),
            "request": np.asarray(captured.request_id, dtype=object),
        }
    )
    for name, values in captured.outputs.items():
        if name != "score":
            frame[f"out_{name}"] = np.asarray(values)
    return frame


def _last_servings(served: pd.DataFrame, grouped: bool) -> np.ndarray:
    """Which rows are their race's last serving (the rows of the latest request that
    served it), or for ungrouped tasks their row id's; rows without the key are kept
    (they are counted as no_key)."""
    if grouped:
        key = served["group"]
        latest = (
            served.sort_values("at", kind="stable").groupby("group")["request"].transform("last")
        )
        return (key.isna() | (served["request"] == latest.reindex(served.index))).to_numpy()
    keyed = served["entity"].notna().to_numpy()
    later = served.sort_values("at", kind="stable").duplicated("entity", keep="last")
    return ~(later.reindex(served.index).to_numpy() & keyed)


def _texts(values: np.ndarray) -> np.ndarray:
    """Ids as text, None where there is none (a blank id is none)."""
    return np.array(
        [
            None if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)
            for v in values
        ],
        dtype=object,
    )


def _results_frame(results: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    entity = cast(str, spec.entity)
    missing = [c for c in (spec.group, entity, spec.target) if c and c not in results]
    if missing:
        raise ValueError(f"the results have no column {', '.join(map(repr, missing))}")
    known = pd.DataFrame(
        {
            "group": _id_texts(results[spec.group]) if spec.group else "",
            "entity": _id_texts(results[entity]),
            "target": pd.to_numeric(results[spec.target], errors="coerce").to_numpy(np.float64),
        }
    )
    if spec.odds and spec.odds in results:
        known["odds"] = pd.to_numeric(results[spec.odds], errors="coerce").to_numpy(np.float64)
    # A row without a result is no result: its runner counts as one without.
    return known[np.isfinite(known["target"].to_numpy())].reset_index(drop=True)


def _id_texts(column: pd.Series) -> np.ndarray:
    """Ids as the client sends them: integral numbers without a trailing '.0'."""
    if pd.api.types.is_float_dtype(column) and bool(
        np.all(np.equal(np.mod(column.dropna(), 1), 0))
    ):
        column = column.astype("Int64")
    return _texts(column.astype(object).where(column.notna(), None).to_numpy())


def _fates(served: pd.DataFrame, known: pd.DataFrame, grouped: bool) -> np.ndarray:
    """Each captured row's fate; in a grouped task a race shares its worst row's fate."""
    fate = np.full(len(served), SCORED, dtype=object)
    keyed = (served["entity"].notna() & served["group"].notna()).to_numpy()
    key, known_key = _keys(served), _keys(known)
    codes, uniques = pd.factorize(np.concatenate([key, known_key]))
    mine, theirs = codes[: len(key)], codes[len(key) :]
    served_times = np.bincount(mine, minlength=len(uniques))
    result_times = np.bincount(theirs, minlength=len(uniques))
    has_result = result_times[mine] > 0
    ambiguous = (served_times[mine] > 1) | (result_times[mine] > 1)
    # grouped: a race is known once any of its runners has a result
    race_known = served["group"].isin(set(known["group"])).to_numpy() if grouped else has_result
    fate[~race_known] = PENDING
    fate[race_known & ~has_result] = WITHOUT_RESULT
    fate[ambiguous] = AMBIGUOUS
    fate[~keyed] = NO_KEY
    if grouped:  # the race's worst fate, for every row of it (rows without a group: alone)
        order = (NO_KEY, AMBIGUOUS, PENDING, WITHOUT_RESULT, SCORED)
        rank = pd.Series(pd.Categorical(fate, categories=order).codes, index=served.index)
        worst = rank.groupby(served["group"]).transform("min")
        in_race = served["group"].notna().to_numpy()
        fate[in_race] = np.array(order, dtype=object)[worst.to_numpy()[in_race].astype(int)]
    return fate


def _keys(frame: pd.DataFrame) -> np.ndarray:
    return np.array(
        [
            f"{g}\x1f{e}"
            for g, e in zip(
                frame["group"].to_numpy(dtype=object),
                frame["entity"].to_numpy(dtype=object),
                strict=True,
            )
        ],
        dtype=object,
    )


def _partial_races(joined: pd.DataFrame, known: pd.DataFrame) -> set[str]:
    """The scored races whose result field holds runners that were not captured."""
    asked = joined.groupby("group").size()
    field_size = known.groupby("group").size().reindex(asked.index)
    return set(asked.index[field_size.to_numpy() > asked.to_numpy()])


def _in_race_order(joined: pd.DataFrame, grouped: bool) -> pd.DataFrame:
    """Rows by day, then race, runners in the order they were served; a race's day is
    the day its first runner was served."""
    if grouped:
        first = joined.groupby("group")["at"].transform("min")
        joined = joined.assign(day=first.dt.strftime("%Y-%m-%d"), race_at=first)
        keys = ["race_at", "group", "position"]
    else:
        joined = joined.assign(day=joined["at"].dt.strftime("%Y-%m-%d"))
        keys = ["at", "position"]
    return joined.sort_values(keys, kind="mergesort").reset_index(drop=True)


# -- the figures ---------------------------------------------------------------------


def _day_quality(day: str, rows: pd.DataFrame, spec: DatasetSpec, grouped: bool) -> DayQuality:
    groups = int(rows["race"].nunique()) if grouped else len(rows)
    if spec.task is Task.RANKING:
        metrics = _ranking(rows, spec)
    elif spec.task is Task.BINARY:
        metrics = binary_metrics(output_of(rows, "probability"), rows["target"].to_numpy())
    else:
        metrics = regression_metrics(
            output_of(rows, "value"),
            rows["target"].to_numpy(),
            output_of(rows, "lower"),
            output_of(rows, "upper"),
        )
    return DayQuality(day, groups, len(rows), {k: float(v) for k, v in metrics.items()})


def output_of(rows: pd.DataFrame, name: str) -> np.ndarray:
    """A captured output of the joined rows (gallop.monitoring.capture: out_{name})."""
    if f"out_{name}" not in rows:
        raise ValueError(f"the captured outputs have no {name!r}")
    return rows[f"out_{name}"].to_numpy(dtype=np.float64)


def _outcomes(rows: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(share, relevance) per result row, as training decides them
    (gallop.training.outcomes): a race's winner is its winner whether it was served or not."""
    manifest = {
        "group": "group",
        "target": "target",
        "target_order": spec.target_order.value if spec.target_order else "descending",
    }
    return race_results(rows, cast("FeatureManifest", manifest))


def race_sizes(rows: pd.DataFrame) -> np.ndarray:
    """The joined rows' races' sizes, in order (a race's rows are contiguous)."""
    race = rows["race"].to_numpy()
    starts = np.flatnonzero(np.r_[True, race[1:] != race[:-1]])
    return np.diff(np.r_[starts, len(race)]).astype(np.int64)


def _ranking(rows: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    share, relevance = rows["share"].to_numpy(), rows["relevance"].to_numpy()
    sizes, score = race_sizes(rows), rows["score"].to_numpy()
    probability = output_of(rows, "win_probability")
    with warnings.catch_warnings():  # a day without a decided race: NaN, said by the value
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = ranking_metrics(score, probability, relevance, share, sizes)
    # Race log loss: only races with exactly one winner whose whole field was served.
    starts = group_starts(sizes)
    winners = np.add.reduceat((share > 0).astype(np.int64), starts)
    whole = ~rows["partial"].to_numpy(dtype=bool)[starts]
    fair = (winners == 1) & whole
    if not fair.any():
        metrics["race_log_loss"] = math.nan
    elif not fair.all():
        keep = np.repeat(fair, sizes)
        metrics["race_log_loss"] = ranking_metrics(
            score[keep], probability[keep], relevance[keep], share[keep], sizes[fair]
        )["race_log_loss"]
    metrics[TOP1_ROI] = _top1_roi(score, share, rows, sizes)
    return metrics


def _top1_roi(score: np.ndarray, share: np.ndarray, rows: pd.DataFrame, sizes: np.ndarray) -> float:
    """Profit per unit staked backing each race's top-ranked runner at its decimal odds (a
    dead heat pays its share; races without a winner or without odds are not bet)."""
    if "odds" not in rows:
        return math.nan
    starts = group_starts(sizes)
    top = np.array(
        [s + int(np.argmax(score[s : s + n])) for s, n in zip(starts, sizes, strict=True)]
    )
    odds = rows["odds"].to_numpy(dtype=np.float64)[top]
    bet = np.isfinite(odds) & (odds > 1.0) & (np.add.reduceat(share, starts) > 0)
    if not bet.any():
        return math.nan
    return float((share[top][bet] * odds[bet] - 1.0).sum() / bet.sum())


def _calibration(joined: pd.DataFrame, spec: DatasetSpec, grouped: bool) -> list[dict[str, float]]:
    if spec.task is Task.REGRESSION:
        return []
    if spec.task is Task.BINARY:
        return reliability(output_of(joined, "probability"), joined["target"].to_numpy())
    share, sizes = joined["share"].to_numpy(), race_sizes(joined)
    decided = np.repeat(np.add.reduceat(share, group_starts(sizes)) > 0, sizes)
    return reliability(output_of(joined, "win_probability")[decided], share[decided])
