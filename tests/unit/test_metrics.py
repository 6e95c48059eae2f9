"""Evaluation metrics, checked against their definitions on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gallop.training.metrics import auc, betting, ece, ranking_metrics, reliability


def test_auc_counts_pairs_and_ties_count_half() -> None:
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=300), 1)  # plenty of ties
    y = (rng.random(300) < 0.4).astype(float)
    positive, negative = score[y == 1], score[y == 0]
    pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    assert auc(score, y) == pytest.approx(pairs.mean(), abs=1e-12)
    assert np.isnan(auc(score, np.ones(300)))


def test_ece_weights_each_bins_gap_by_its_share_of_rows() -> None:
    assert ece(np.full(10, 0.5), np.array([1.0, 0.0] * 5)) == pytest.approx(0.0)
    p = np.r_[np.full(8, 0.9), np.full(2, 0.1)]
    y = np.r_[np.ones(4), np.zeros(4), np.zeros(2)]  # 0.9 -> half come true; 0.1 -> none
    assert ece(p, y) == pytest.approx(0.8 * 0.4 + 0.2 * 0.1)
    bins = reliability(p, y)
    assert [b["count"] for b in bins] == [2, 8] and bins[1]["observed"] == pytest.approx(0.5)


def test_ranking_metrics_on_two_races() -> None:
    score = np.array([2.0, 1.0, 0.0, 0.0, 1.0])
    probability = np.array([0.6, 0.3, 0.1, 0.4, 0.6])
    share = np.array([0.0, 1.0, 0.0, 0.0, 1.0])  # race 1: the second favourite won
    relevance = np.array([1.0, 3.0, 2.0, 1.0, 3.0])
    metrics = ranking_metrics(score, probability, relevance, share, np.array([3, 2]))
    assert metrics["top1_hit_rate"] == 0.5
    assert metrics["race_log_loss"] == pytest.approx(-(np.log(0.3) + np.log(0.6)) / 2)
    brier_1 = 0.6**2 + 0.7**2 + 0.1**2
    assert metrics["race_brier"] == pytest.approx((brier_1 + 0.4**2 + 0.4**2) / 2)
    assert metrics["ndcg@10"] < 1.0 and set(metrics) >= {"ndcg@4", "ece"}


def test_betting_flat_and_kelly_stakes_worked_by_hand() -> None:
    probability = np.array([0.5, 0.3, 0.2, 0.6, 0.4])
    odds = np.array([3.0, 2.0, 10.0, 2.0, np.nan])  # no price: never backed
    share = np.array([1.0, 0.0, 0.0, 0.0, 1.0])
    result = betting(probability, odds, share, np.array([3, 2]), margin=0.05, kelly_fraction=0.25)
    flat = result["flat"]
    # race 1: back runners 0 (+2) and 2 (-1); race 2: back runner 3 (-1)
    assert (flat["bets"], flat["turnover"], flat["profit"], flat["max_drawdown"]) == (3, 3, 0, 1)
    kelly = result["kelly_0.25"]
    # race 1 stakes 0.25 * edge / (odds - 1) of 100: 6.25 on runner 0 (+12.5), 2.78 on 2
    bank_after_1 = 100 * (1 + 0.0625 * 2 - 0.25 / 9)
    bank_after_2 = bank_after_1 * (1 - 0.05)
    assert kelly["turnover"] == pytest.approx(100 * (0.0625 + 0.25 / 9) + 0.05 * bank_after_1)
    assert kelly["profit"] == pytest.approx(bank_after_2 - 100)
    assert kelly["max_drawdown"] == pytest.approx(bank_after_1 - bank_after_2)
    assert kelly["roi"] == pytest.approx(kelly["profit"] / kelly["turnover"])


def test_a_race_without_a_winner_is_void_for_betting_and_calibration() -> None:
    probability = np.array([0.5, 0.3, 0.2, 0.9, 0.1])
    odds = np.array([3.0, 2.0, 10.0, 2.0, 20.0])
    share = np.array([1.0, 0.0, 0.0, 0.0, 0.0])  # race 2 has no recorded result
    sizes = np.array([3, 2])
    with_void = betting(probability, odds, share, sizes)
    alone = betting(probability[:3], odds[:3], share[:3], sizes[:1])
    assert with_void == alone  # its bets are neither placed nor lost
    metrics = ranking_metrics(np.log(probability), probability, share * 3, share, sizes)
    assert metrics["ece"] == pytest.approx(ece(probability[:3], share[:3]))
