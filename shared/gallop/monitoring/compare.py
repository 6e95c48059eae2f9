"""Champion against challenger on the same live races, and whether to promote.

Both models' captured rows (served or shadow: a challenger in shadow scores the races the
champion answers) are joined with the newest VALID version's results by
gallop.monitoring.quality's join, each model on its own: a race counts for a model only
whole and settled, judged on its last serving. The races both models have are paired,
and each metric is computed race by race:

- ranking: race log loss (races with one winner whose whole field was served), NDCG@1,
  NDCG@3 and top-1 hit (decided races);
- binary: log loss and Brier score (per row; a grouped task's race is the mean of its rows);
- regression: squared error (the metric is its root mean, RMSE).

Each metric's difference is oriented so that positive means the challenger is better
(champion - challenger for the lower-is-better ones), with a 95 % interval from a paired
bootstrap over races (B = 2,000 resamples of the races, a fixed seed: the same races give
the same interval).

The recommendation rule, on the task's primary metric (ranking: race log loss; binary:
log loss; regression: RMSE):

1. fewer than `min_races` (setting `renewal_min_races`, 300) paired races with the
   primary metric: "not enough races yet";
2. else the interval entirely above zero (the challenger better on every plausible
   reading): "promote";
3. else: "keep".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gallop.models.stack import group_starts
from gallop.monitoring.capture import CapturedRows
from gallop.monitoring.quality import JoinCounts, output_of, race_sizes, scored_rows
from gallop.monitoring.status import lower_is_better
from gallop.spec import DatasetSpec, Task
from gallop.training.metrics import ndcg_per_group

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gallop.metadata.models import Dataset
    from gallop.storage import Store

PROMOTE, KEEP, NOT_ENOUGH = "promote", "keep", "not enough races yet"
PRIMARY = {"ranking": "race_log_loss", "binary": "log_loss", "regression": "rmse"}
METRICS = {
    "ranking": ("race_log_loss", "ndcg@1", "ndcg@3", "top1_hit_rate"),
    "binary": ("log_loss", "brier"),
    "regression": ("rmse",),
}
ROOT_MEAN = ("rmse",)  # per race: the squared error; the metric: the root of its mean
RESAMPLES = 2000
SEED = 14
LEVEL = 0.95
# Resampled values held at once (resamples x races): 2,000 x 10,000 races would be 160 MB.
CHUNK_VALUES = 2_000_000

RULE = (
    "Decided on the primary metric ({primary}) over the races both models scored whose "
    "results are known: fewer than {min_races} such races: 'not enough races yet'; the "
    "95 % paired-bootstrap interval of the difference (positive: the challenger is better) "
    "entirely above zero: 'promote'; otherwise: 'keep'."
)


@dataclass(frozen=True)
class MetricDifference:
    metric: str
    races: int  # paired races with this metric for both models
    champion: float
    challenger: float
    difference: float  # positive: the challenger is better
    low: float  # the 95 % bootstrap interval of the difference
    high: float
    better: str  # "lower" or "higher": which way the metric itself is better


@dataclass(frozen=True)
class Comparison:
    dataset: str
    task: str
    champion: str
    challenger: str
    races: int  # races both models scored, whose results are known
    primary_metric: str
    recommendation: str  # PROMOTE, KEEP or NOT_ENOUGH
    reason: str
    rule: str
    min_races: int
    metrics: list[MetricDifference] = field(default_factory=list)
    counts: dict[str, JoinCounts] = field(default_factory=dict)  # champion, challenger
    resamples: int = RESAMPLES
    seed: int = SEED

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = [_finite(asdict(m)) for m in self.metrics]
        return out

    def primary(self) -> MetricDifference | None:
        return next((m for m in self.metrics if m.metric == self.primary_metric), None)


def compare(
    champion: CapturedRows,
    challenger: CapturedRows,
    results: pd.DataFrame,
    spec: DatasetSpec,
    *,
    names: tuple[str, str] = ("champion", "challenger"),
    min_races: int = 300,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """Compare two models' captured rows on the races both have results for (the module's
    docstring says how, and the rule). names: the two models' ids, for the reply."""
    task = spec.task.value
    joined = {}
    counts = {}
    for role, captured in (("champion", champion), ("challenger", challenger)):
        joined[role], counts[role] = scored_rows(captured, results, spec)
    mine, theirs = (per_race(joined[r], spec) for r in ("champion", "challenger"))
    paired = mine.add_suffix("_a").join(theirs.add_suffix("_b"), how="inner")
    metrics = [
        _difference(
            name,
            paired[f"{name}_a"].to_numpy(np.float64),
            paired[f"{name}_b"].to_numpy(np.float64),
            resamples,
            seed,
        )
        for name in METRICS[task]
    ]
    primary = PRIMARY[task]
    recommendation, reason = recommend(next(m for m in metrics if m.metric == primary), min_races)
    return Comparison(
        dataset=spec.name,
        task=task,
        champion=names[0],
        challenger=names[1],
        races=len(paired),
        primary_metric=primary,
        recommendation=recommendation,
        reason=reason,
        rule=RULE.format(primary=primary, min_races=min_races),
        min_races=min_races,
        metrics=metrics,
        counts=counts,
        resamples=resamples,
        seed=seed,
    )


def recommend(primary: MetricDifference, min_races: int) -> tuple[str, str]:
    """The rule (the module's docstring) applied to the primary metric's difference."""
    if primary.races < min_races:
        return NOT_ENOUGH, (
            f"{primary.races} paired races with {primary.metric}; the rule needs {min_races}"
        )
    said = (
        f"{primary.metric}: {primary.challenger:.4f} for the challenger, {primary.champion:.4f} "
        f"for the champion over {primary.races} races; difference {primary.difference:+.4f} "
        f"(positive: the challenger is better), 95 % interval {primary.low:+.4f} to "
        f"{primary.high:+.4f}"
    )
    if primary.low > 0:
        return PROMOTE, said + ": entirely above zero"
    return KEEP, said + ": not entirely above zero"


# -- per race --------------------------------------------------------------------------


def per_race(joined: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """One row per race (ungrouped tasks: per row id), indexed by its id, a column per
    metric of the task, NaN where a race cannot say (undecided, or a partial field)."""
    names = METRICS[spec.task.value]
    if joined.empty:
        return pd.DataFrame(columns=list(names), dtype=np.float64)
    if spec.task is Task.RANKING:
        return _ranking(joined)
    target = joined["target"].to_numpy(np.float64)
    if spec.task is Task.BINARY:
        p = np.clip(output_of(joined, "probability"), 1e-15, 1 - 1e-15)
        values = {
            "log_loss": -(target * np.log(p) + (1 - target) * np.log(1 - p)),
            "brier": (p - target) ** 2,
        }
    else:
        values = {"rmse": (target - output_of(joined, "value")) ** 2}
    key = joined["group"] if spec.group else joined["entity"]
    return pd.DataFrame(values).groupby(key.to_numpy(dtype=object), sort=False).mean()


def _ranking(joined: pd.DataFrame) -> pd.DataFrame:
    sizes = race_sizes(joined)
    starts = group_starts(sizes)
    share = joined["share"].to_numpy(np.float64)
    relevance = joined["relevance"].to_numpy(np.float64)
    score = joined["score"].to_numpy(np.float64)
    probability = output_of(joined, "win_probability")
    decided = np.add.reduceat(share, starts) > 0
    winners = np.add.reduceat((share > 0).astype(np.int64), starts)
    whole = ~joined["partial"].to_numpy(dtype=bool)[starts]
    loss = -np.add.reduceat(share * np.log(np.maximum(probability, 1e-300)), starts)
    ranked = np.lexsort((-score, np.repeat(np.arange(len(sizes)), sizes)))  # stable
    top = ranked[group_starts(sizes)]
    undecided = np.where(decided, 1.0, np.nan)
    values = {
        "race_log_loss": np.where((winners == 1) & whole, loss, np.nan),
        "ndcg@1": ndcg_per_group(score, relevance, sizes, 1) * undecided,
        "ndcg@3": ndcg_per_group(score, relevance, sizes, 3) * undecided,
        "top1_hit_rate": (share[top] > 0).astype(np.float64) * undecided,
    }
    return pd.DataFrame(values, index=joined["group"].to_numpy(dtype=object)[starts])


# -- the difference and its interval ----------------------------------------------------


def _difference(
    metric: str, champion: np.ndarray, challenger: np.ndarray, resamples: int, seed: int
) -> MetricDifference:
    both = np.isfinite(champion) & np.isfinite(challenger)
    a, b = champion[both], challenger[both]
    lower = lower_is_better(metric)
    better = "lower" if lower else "higher"
    if not len(a):
        nan = math.nan
        return MetricDifference(metric, 0, nan, nan, nan, nan, nan, better)
    root = metric in ROOT_MEAN
    stats = paired_bootstrap(a, b, lower=lower, root=root, resamples=resamples, seed=seed)
    low, high = np.percentile(stats, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    first, second = _aggregate(a, root), _aggregate(b, root)
    return MetricDifference(
        metric,
        len(a),
        float(first),
        float(second),
        float(_oriented(first, second, lower)),
        float(low),
        float(high),
        better,
    )


def paired_bootstrap(
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    lower: bool,
    root: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """The oriented difference (positive: the challenger better) on `resamples` resamples
    of the races, drawn with replacement, each race keeping its pair."""
    rng = np.random.default_rng(seed)
    n = len(champion)
    stats = np.empty(resamples, dtype=np.float64)
    step = max(1, CHUNK_VALUES // n)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        first = _aggregate(champion[index], root, axis=1)
        second = _aggregate(challenger[index], root, axis=1)
        stats[start : start + rows] = _oriented(first, second, lower)
    return stats


def _aggregate(values: np.ndarray, root: bool, axis: int | None = None) -> Any:
    mean = values.mean(axis=axis)
    return np.sqrt(mean) if root else mean


def _oriented(champion: Any, challenger: Any, lower: bool) -> Any:
    return champion - challenger if lower else challenger - champion


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """NaN as None: the reply is JSON."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()
    }


# -- from the stores ----------------------------------------------------------------------


def compare_dataset(
    engine: Engine,
    data: Store,
    dataset: Dataset,
    champion: str,
    challenger: str,
    min_races: int,
    read: dict[str, pd.DataFrame] | None = None,
) -> Comparison:
    """Compare the two models' captured rows since the challenger's first (the champion's
    earlier races have no pair) against the dataset's newest VALID version (`read`: as
    gallop.monitoring.quality.newest_results takes it)."""
    from gallop.metadata import repo
    from gallop.monitoring.capture import read_captured
    from gallop.monitoring.quality import newest_results

    spec = repo.spec_of(dataset)
    theirs = read_captured(data, dataset.name, challenger)
    since = str(theirs.at[0].astype("datetime64[D]")) if len(theirs) else None
    mine = read_captured(data, dataset.name, champion, since) if since else theirs
    results = newest_results(engine, data, dataset, read)
    return compare(mine, theirs, results, spec, names=(champion, challenger), min_races=min_races)
