"""Two models on the same races: each metric race by race, and the 95 % paired-bootstrap
interval of the difference. The champion against the challenger on live races
(gallop.monitoring.compare) and the stack against its best base on held-out races
(gallop.training.stacking) are judged alike.

Per race (ranking): race log loss (races with one winner, the whole field scored), NDCG@1,
NDCG@3 and top-1 hit (decided races). Per row (a grouped binary task averages its race's
rows): binary log loss and Brier score; regression squared error, whose metric is the
root of its mean (RMSE).

A difference is oriented so that positive means the second model is better (first -
second for the lower-is-better metrics); its interval comes from B = 2,000 resamples of
the races with a fixed seed, so the same races give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gallop.models.stack import group_starts
from gallop.monitoring.status import lower_is_better
from gallop.training.metrics import ndcg_per_group

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


@dataclass(frozen=True)
class MetricDifference:
    metric: str
    races: int  # paired races with this metric for both models
    champion: float  # the first model's value
    challenger: float  # the second model's value
    difference: float  # positive: the second model (the challenger) is better
    low: float  # the 95 % bootstrap interval of the difference
    high: float
    better: str  # "lower" or "higher": which way the metric itself is better


def ranking_values(
    score: np.ndarray,
    probability: np.ndarray,
    share: np.ndarray,
    relevance: np.ndarray,
    sizes: np.ndarray,
    whole: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each race's metrics, NaN where a race cannot say. whole: per race, whether the
    model scored its whole field (a race log loss needs every runner's chance)."""
    starts = group_starts(sizes)
    decided = np.add.reduceat(share, starts) > 0
    winners = np.add.reduceat((share > 0).astype(np.int64), starts)
    whole = np.ones(len(sizes), dtype=bool) if whole is None else whole
    loss = -np.add.reduceat(share * np.log(np.maximum(probability, 1e-300)), starts)
    ranked = np.lexsort((-score, np.repeat(np.arange(len(sizes)), sizes)))  # stable
    top = ranked[starts]
    undecided = np.where(decided, 1.0, np.nan)
    return {
        "race_log_loss": np.where((winners == 1) & whole, loss, np.nan),
        "ndcg@1": ndcg_per_group(score, relevance, sizes, 1) * undecided,
        "ndcg@3": ndcg_per_group(score, relevance, sizes, 3) * undecided,
        "top1_hit_rate": (share[top] > 0).astype(np.float64) * undecided,
    }


def row_values(task: str, target: np.ndarray, output: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's metrics: output is the probability (binary) or the value (regression)."""
    if task == "binary":
        p = np.clip(output, 1e-15, 1 - 1e-15)
        return {
            "log_loss": -(target * np.log(p) + (1 - target) * np.log(1 - p)),
            "brier": (p - target) ** 2,
        }
    return {"rmse": (target - output) ** 2}


def difference(
    metric: str,
    first: np.ndarray,
    second: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> MetricDifference:
    """The metric of each model over the races both have a value for, their oriented
    difference (positive: the second is better) and its 95 % paired-bootstrap interval."""
    both = np.isfinite(first) & np.isfinite(second)
    a, b = first[both], second[both]
    lower = lower_is_better(metric)
    better = "lower" if lower else "higher"
    if not len(a):
        nan = math.nan
        return MetricDifference(metric, 0, nan, nan, nan, nan, nan, better)
    root = metric in ROOT_MEAN
    stats = paired_bootstrap(a, b, lower=lower, root=root, resamples=resamples, seed=seed)
    low, high = np.percentile(stats, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    one, two = _aggregate(a, root), _aggregate(b, root)
    return MetricDifference(
        metric,
        len(a),
        float(one),
        float(two),
        float(_oriented(one, two, lower)),
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


def aggregate(metric: str, values: np.ndarray) -> float:
    """The metric over races from its per-race values (NaN ones left out)."""
    values = values[np.isfinite(values)]
    return float(_aggregate(values, metric in ROOT_MEAN)) if len(values) else math.nan


def _aggregate(values: np.ndarray, root: bool, axis: int | None = None) -> Any:
    mean = values.mean(axis=axis)
    return np.sqrt(mean) if root else mean


def _oriented(champion: Any, challenger: Any, lower: bool) -> Any:
    return champion - challenger if lower else challenger - champion
