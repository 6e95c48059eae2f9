"""Champion against challenger on the same live races, and whether to promote.

Both models' captured rows (served or shadow: a challenger in shadow scores the races the
champion answers) are joined with the newest VALID version's results by
gallop.monitoring.quality's join, each model on its own: a race counts for a model only
whole and settled, judged on its last serving. The races both models have are paired,
and each metric is computed race by race, with the 95 % interval of each difference from a
paired bootstrap over races (gallop.paired: the metrics, the orientation, positive meaning
the challenger is better, and the resampling).

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
from gallop.paired import (
    METRICS,
    PRIMARY,
    RESAMPLES,
    SEED,
    MetricDifference,
    difference,
    ranking_values,
    row_values,
)
from gallop.spec import DatasetSpec, Task

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gallop.metadata.models import Dataset
    from gallop.storage import Store

PROMOTE, KEEP, NOT_ENOUGH = "promote", "keep", "not enough races yet"

RULE = (
    "Decided on the primary metric ({primary}) over the races both models scored whose "
    "results are known: fewer than {min_races} such races: 'not enough races yet'; the "
    "95 % paired-bootstrap interval of the difference (positive: the challenger is better) "
    "entirely above zero: 'promote'; otherwise: 'keep'."
)


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
        difference(
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
        sizes = race_sizes(joined)
        starts = group_starts(sizes)
        values = ranking_values(
            joined["score"].to_numpy(np.float64),
            output_of(joined, "win_probability"),
            joined["share"].to_numpy(np.float64),
            joined["relevance"].to_numpy(np.float64),
            sizes,
            whole=~joined["partial"].to_numpy(dtype=bool)[starts],
        )
        return pd.DataFrame(values, index=joined["group"].to_numpy(dtype=object)[starts])
    output = "probability" if spec.task is Task.BINARY else "value"
    values = row_values(
        spec.task.value, joined["target"].to_numpy(np.float64), output_of(joined, output)
    )
    key = joined["group"] if spec.group else joined["entity"]
    return pd.DataFrame(values).groupby(key.to_numpy(dtype=object), sort=False).mean()


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
