"""What a group's results mean for training and evaluation, decided in one place."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gallop.manifests import FeatureManifest


def race_results(frame: pd.DataFrame, manifest: FeatureManifest) -> tuple[np.ndarray, np.ndarray]:
    """(share, relevance) per row of a ranking task. share: the row's part of its group's
    win: 1 for the best result, split in a dead heat, 0 for the rest and for every row of
    a group with no winner (with relevance grades, higher is better, a grade of 0 never
    wins: a query whose documents are all irrelevant). relevance, for NDCG and
    lambdarank: the grade itself, or for finishing positions 3 for the winner, 2 for
    second, 1 for third, 0 for the rest."""
    group, target = manifest["group"], manifest["target"]
    ascending = manifest["target_order"] == "ascending"
    values = frame[target].to_numpy(dtype=np.float64)
    best = frame.groupby(group, sort=False)[target].transform("min" if ascending else "max")
    won = values == best.to_numpy(dtype=np.float64)
    if not ascending:
        won &= values > 0
    winners = pd.Series(won, index=frame.index).groupby(frame[group], sort=False).transform("sum")
    share = won / np.maximum(winners.to_numpy(dtype=np.float64), 1.0)
    relevance = np.clip(4 - values, 0, None) if ascending else values
    return share, relevance
