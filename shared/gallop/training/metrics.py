"""Ranking metrics, as LightGBM defines them."""

from __future__ import annotations

import math

import numpy as np

from gallop.models.stack import group_starts


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean NDCG@k over groups; gain 2^rel - 1, discount log2(rank + 1); a group with no
    relevant item counts 1 (LightGBM's convention). Ties in score keep the rows' order.
    Vectorised (no loop over groups): the monitor scores 10,000 races a day by it."""
    if not len(groups):
        return math.nan
    return float(ndcg_per_group(scores, relevance, groups, k).mean())


def ndcg_per_group(
    scores: np.ndarray, relevance: np.ndarray, groups: np.ndarray, k: int
) -> np.ndarray:
    """Each group's NDCG@k, as ndcg_at_k defines it (the champion/challenger comparison
    pairs them race by race)."""
    sizes = np.asarray(groups, dtype=np.int64)
    group = np.repeat(np.arange(len(sizes)), sizes)
    rel = np.asarray(relevance, dtype=np.float64)
    # rows sorted within their group (groups are contiguous, so each keeps its place)
    by_score = np.lexsort((-np.asarray(scores, dtype=np.float64), group))  # stable
    by_relevance = np.lexsort((-rel, group))
    rank = np.arange(len(group)) - np.repeat(group_starts(sizes), sizes)
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    got = np.bincount(group, (2.0 ** rel[by_score] - 1) * discount, minlength=len(sizes))
    best = np.bincount(group, (2.0 ** rel[by_relevance] - 1) * discount, minlength=len(sizes))
    return np.divide(got, best, out=np.ones(len(sizes)), where=best > 0)


def ece(probability: np.ndarray, outcome: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over `bins` equal-width bins of the probability."""
    return float(
        sum(
            b["count"] * abs(b["predicted"] - b["observed"])
            for b in reliability(probability, outcome, bins)
        )
        / max(len(probability), 1)
    )


def reliability(
    probability: np.ndarray, outcome: np.ndarray, bins: int = 15
) -> list[dict[str, float]]:
    """Per non-empty equal-width bin: mean predicted probability, observed frequency, count."""
    index = np.minimum((np.asarray(probability) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=probability, minlength=bins)
    observed = np.bincount(index, weights=outcome, minlength=bins)
    return [
        {
            "predicted": predicted[i] / counts[i],
            "observed": observed[i] / counts[i],
            "count": int(counts[i]),
        }
        for i in range(bins)
        if counts[i]
    ]


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outranks a negative (ties count half)."""
    positive = np.asarray(y) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average rank of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(probability: np.ndarray, y: np.ndarray) -> dict[str, float]:
    clipped = np.clip(probability, 1e-15, 1 - 1e-15)
    return {
        "auc": auc(probability, y),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "brier": float(np.mean((probability - y) ** 2)),
        "ece": ece(probability, y),
    }


def regression_metrics(
    value: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> dict[str, float]:
    residual = y - value
    spread = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": 1.0 - float(residual @ residual) / spread if spread else float("nan"),
        "coverage": float(np.mean((y >= lower) & (y <= upper))),
        "interval_width": float(np.mean(upper - lower)),
    }


def ranking_metrics(
    score: np.ndarray,
    probability: np.ndarray,
    relevance: np.ndarray,
    share: np.ndarray,
    sizes: np.ndarray,
) -> dict[str, float]:
    """share: each runner's part of its race's win (1 for the winner, 1/2 in a dead heat,
    all 0 in a race with no recorded winner); probability: the model's win probabilities."""
    starts = group_starts(sizes)
    top = np.array(
        [s + int(np.argmax(score[s : s + n])) for s, n in zip(starts, sizes, strict=True)]
    )
    decided = np.add.reduceat(share, starts) > 0
    metrics = {f"ndcg@{k}": ndcg_at_k(score, relevance, sizes, k) for k in (1, 3, 4, 5, 10)}
    metrics["top1_hit_rate"] = float((share[top] > 0)[decided].mean())
    metrics["race_log_loss"] = float(
        -(share * np.log(np.maximum(probability, 1e-300))).sum() / max(int(decided.sum()), 1)
    )
    brier = np.add.reduceat((probability - share) ** 2, starts)
    metrics["race_brier"] = float(brier[decided].mean())
    counted = np.repeat(decided, sizes)  # a race with no result says nothing of calibration
    metrics["ece"] = ece(probability[counted], share[counted])
    return metrics


def betting(
    probability: np.ndarray,
    odds: np.ndarray,
    share: np.ndarray,
    sizes: np.ndarray,
    margin: float = 0.05,
    kelly_fraction: float = 0.25,
    void_without_winner: bool = True,
) -> dict[str, dict[str, float]]:
    """Back every runner whose expected return probability x odds exceeds 1 + margin, races
    in the given (time) order: flat one-unit stakes, and fractional Kelly stakes from a bank
    of 100 (each race staked from the bank at its start). A dead heat pays its share; a
    race with no winner is void (stakes returned). Binary outcomes (groups of one row)
    pass void_without_winner=False: there a 0 is a lost bet, not a void race."""
    odds = np.asarray(odds, dtype=np.float64)
    edge = probability * odds - 1.0
    bet = np.isfinite(odds) & (odds > 1.0) & (edge > margin)
    starts = group_starts(sizes)
    if void_without_winner:
        bet &= np.repeat(np.add.reduceat(share, starts) > 0, sizes)
    returns = np.where(bet, share * odds - 1.0, 0.0)  # per unit staked

    flat = np.where(bet, 1.0, 0.0)
    flat_path = np.cumsum(np.add.reduceat(flat * returns, starts))
    kelly_share = np.where(bet, kelly_fraction * edge / np.where(bet, odds - 1.0, 1.0), 0.0)
    staked = np.add.reduceat(kelly_share, starts)
    scale = np.where(staked > 1.0, 1.0 / np.maximum(staked, 1e-300), 1.0)  # never over the bank
    race_share, race_return = staked * scale, np.add.reduceat(kelly_share * returns, starts) * scale
    bank, turnover, path = 100.0, 0.0, []
    for fraction, gain in zip(race_share, race_return, strict=True):
        turnover += fraction * bank
        bank += gain * bank
        path.append(bank - 100.0)
    return {
        "flat": _strategy(int(bet.sum()), float(flat.sum()), flat_path),
        f"kelly_{kelly_fraction:g}": _strategy(int(bet.sum()), turnover, np.array(path)),
    }


def _strategy(bets: int, turnover: float, profit_path: np.ndarray) -> dict[str, float]:
    profit = float(profit_path[-1]) if len(profit_path) else 0.0
    peak = np.maximum.accumulate(np.r_[0.0, profit_path])
    return {
        "bets": float(bets),
        "turnover": turnover,
        "profit": profit,
        "roi": profit / turnover if turnover else 0.0,
        "max_drawdown": float((peak - np.r_[0.0, profit_path]).max()),
    }
