"""The champion/challenger comparison on races whose truth is known: each race's winner
is drawn from known win probabilities, and the models' scores are those probabilities
blurred by more or less noise, so which model is better is known before comparing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from gallop.models.stack import softmax_within_groups
from gallop.monitoring.compare import KEEP, NOT_ENOUGH, PROMOTE, compare
from gallop.paired import paired_bootstrap
from gallop.spec import DatasetSpec

RACES = DatasetSpec(
    name="races",
    task="ranking",
    target="position",
    target_order="ascending",
    group="race_id",
    entity="horse_id",
)
CHURN = DatasetSpec(name="churn", task="binary", target="left", entity="customer")
TIMES = DatasetSpec(name="times", task="regression", target="seconds", entity="run")
START = np.datetime64("2026-12-01T00:30:00", "us")


@dataclass
class Captured:
    """The shape gallop.monitoring.capture.read_captured hands over."""

    at: np.ndarray
    group: np.ndarray
    entity: np.ndarray
    score: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    request_id: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))

    def __len__(self) -> int:
        return len(self.score)


@dataclass
class Races:
    sizes: np.ndarray
    race: np.ndarray  # per runner
    horse: np.ndarray
    strength: np.ndarray  # the true log-odds of winning
    results: pd.DataFrame

    def served(self, score: np.ndarray, keep: np.ndarray | None = None) -> Captured:
        """What a model scoring these races would have captured (keep: its races)."""
        rows = np.ones(len(self.race), bool) if keep is None else np.repeat(keep, self.sizes)
        sizes = self.sizes if keep is None else self.sizes[keep]
        group = self.race[rows].astype(object)
        return Captured(
            at=np.repeat(START + np.arange(len(sizes)) * 60_000_000, sizes),
            group=group,
            entity=self.horse[rows],
            score=score[rows],
            outputs={"win_probability": softmax_within_groups(score[rows], sizes)},
            request_id=np.array([f"q-{g}" for g in group], dtype=object),
        )

    def model(self, noise: float, seed: int) -> np.ndarray:
        """Scores of a model that knows the truth up to `noise`."""
        return self.strength + np.random.default_rng(seed).normal(0, noise, len(self.strength))


def races(n: int, seed: int = 1) -> Races:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 11, n)
    race = np.repeat([f"R{i:05d}" for i in range(n)], sizes)
    horse = np.array([f"H{i:06d}" for i in range(len(race))], dtype=object)
    strength = rng.normal(0, 1.2, len(race))
    truth = softmax_within_groups(strength, sizes)
    position = np.empty(len(race))
    for start, size in zip(np.r_[0, np.cumsum(sizes)[:-1]], sizes, strict=True):
        p = truth[start : start + size]
        winner = rng.choice(size, p=p / p.sum())  # the winner from the true chances
        rest = rng.permutation([i for i in range(size) if i != winner])
        position[start + winner] = 1
        position[start + rest] = np.arange(2, size + 1)
    results = pd.DataFrame({"race_id": race, "horse_id": horse, "position": position})
    return Races(sizes, race, horse, strength, results)


def test_a_truly_better_challenger_is_recommended_for_promotion() -> None:
    # GIVEN 600 races; the challenger's scores are the truth blurred a little, the
    # champion's blurred a lot
    field_ = races(600)
    champion = field_.served(field_.model(noise=1.5, seed=2))
    challenger = field_.served(field_.model(noise=0.3, seed=3))
    # WHEN they are compared
    result = compare(champion, challenger, field_.results, RACES, min_races=300)
    # THEN every race is paired, and the challenger is better on the primary metric,
    # clear of zero
    assert result.races == 600
    primary = result.primary()
    assert primary is not None and primary.metric == "race_log_loss"
    assert primary.challenger < primary.champion  # lower log loss
    assert 0 < primary.low <= primary.difference <= primary.high
    assert result.recommendation == PROMOTE
    assert "entirely above zero" in result.reason
    hits = next(m for m in result.metrics if m.metric == "top1_hit_rate")
    assert hits.better == "higher" and hits.difference > 0


def test_a_truly_worse_challenger_is_kept_out_and_its_difference_is_negative() -> None:
    field_ = races(600)
    champion = field_.served(field_.model(noise=0.3, seed=3))
    challenger = field_.served(field_.model(noise=1.5, seed=2))
    result = compare(champion, challenger, field_.results, RACES, min_races=300)
    primary = result.primary()
    assert primary is not None and primary.high < 0  # the orientation: negative = worse
    assert result.recommendation == KEEP


def test_equally_good_models_are_rarely_promoted() -> None:
    # GIVEN ten seasons where both models blur the truth by the same amount
    promoted = 0
    for season in range(10):
        field_ = races(300, seed=100 + season)
        champion = field_.served(field_.model(noise=0.8, seed=2 * season))
        challenger = field_.served(field_.model(noise=0.8, seed=2 * season + 1))
        result = compare(champion, challenger, field_.results, RACES, min_races=300)
        assert result.recommendation in (PROMOTE, KEEP)  # 300 races: enough to decide
        promoted += result.recommendation == PROMOTE
    # THEN hardly any is promoted: the interval's lower end clears zero by chance 1 time
    # in 40 (measured: 3 of 120 such seasons)
    assert promoted <= 1


def test_few_races_are_not_enough_even_for_a_better_challenger() -> None:
    field_ = races(60)
    champion = field_.served(field_.model(noise=1.5, seed=2))
    challenger = field_.served(field_.model(noise=0.3, seed=3))
    result = compare(champion, challenger, field_.results, RACES, min_races=300)
    assert result.recommendation == NOT_ENOUGH
    assert result.reason == "60 paired races with race_log_loss; the rule needs 300"
    assert "fewer than 300 such races" in result.rule


def test_only_races_both_models_scored_are_paired() -> None:
    # GIVEN a challenger in shadow on every other race, and a last race without results
    field_ = races(400)
    shadowed = np.arange(400) % 2 == 0
    champion = field_.served(field_.model(noise=1.5, seed=2))
    challenger = field_.served(field_.model(noise=0.3, seed=3), keep=shadowed)
    unfinished = field_.results[field_.results["race_id"] != "R00000"]
    result = compare(champion, challenger, unfinished, RACES, min_races=100)
    # THEN the pairs are the 199 shadowed races that have finished
    assert result.races == 199
    assert result.counts["challenger"].pending == field_.sizes[0]
    assert result.recommendation == PROMOTE


def test_the_interval_is_reproducible_and_matches_the_normal_approximation() -> None:
    # GIVEN per-race differences with a known mean and spread
    rng = np.random.default_rng(7)
    champion = rng.normal(1.0, 0.5, 2000)
    challenger = champion - rng.normal(0.05, 0.4, 2000)  # lower is better: 0.05 better
    stats = paired_bootstrap(champion, challenger, lower=True)
    again = paired_bootstrap(champion, challenger, lower=True)
    # THEN the same seed gives the same resamples, and the 95 % interval is the mean
    # difference +- 1.96 standard errors
    assert np.array_equal(stats, again)
    difference = champion - challenger
    se = difference.std(ddof=1) / np.sqrt(len(difference))
    low, high = np.percentile(stats, [2.5, 97.5])
    assert low == pytest.approx(difference.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(difference.mean() + 1.96 * se, abs=0.25 * se)


def test_binary_better_calibrated_challenger_is_promoted() -> None:
    # GIVEN outcomes drawn from known probabilities; the champion's are pulled halfway
    # to 0.5 and blurred
    rng = np.random.default_rng(11)
    n = 3000
    truth = rng.uniform(0.05, 0.95, n)
    left = (rng.uniform(size=n) < truth).astype(float)
    blurred = np.clip(0.5 + 0.5 * (truth - 0.5) + rng.normal(0, 0.1, n), 0.01, 0.99)
    customer = np.array([f"C{i}" for i in range(n)], dtype=object)
    results = pd.DataFrame({"customer": customer, "left": left})

    def served(p: np.ndarray) -> Captured:
        return Captured(
            at=START + np.arange(n) * 1_000_000,
            group=np.full(n, None, dtype=object),
            entity=customer,
            score=p,
            outputs={"probability": p},
            request_id=np.array([f"q-{c}" for c in customer], dtype=object),
        )

    result = compare(served(blurred), served(truth), results, CHURN, min_races=300)
    assert result.primary_metric == "log_loss" and result.races == n
    assert result.recommendation == PROMOTE
    brier = next(m for m in result.metrics if m.metric == "brier")
    assert brier.low > 0


def test_regression_rmse_difference_is_the_difference_of_the_rmses() -> None:
    rng = np.random.default_rng(5)
    n = 1000
    truth = rng.normal(60, 5, n)
    seconds = truth + rng.normal(0, 1, n)
    run = np.array([f"r{i}" for i in range(n)], dtype=object)
    results = pd.DataFrame({"run": run, "seconds": seconds})

    def served(v: np.ndarray) -> Captured:
        return Captured(
            at=START + np.arange(n) * 1_000_000,
            group=np.full(n, None, dtype=object),
            entity=run,
            score=v,
            outputs={"value": v},
            request_id=np.array([f"q-{r}" for r in run], dtype=object),
        )

    biased = truth + 1.0  # a champion one second slow
    result = compare(served(biased), served(truth), results, TIMES, min_races=300)
    primary = result.primary()
    assert primary is not None
    assert primary.champion == pytest.approx(np.sqrt(np.mean((seconds - biased) ** 2)))
    assert primary.challenger == pytest.approx(np.sqrt(np.mean((seconds - truth) ** 2)))
    assert primary.difference == pytest.approx(primary.champion - primary.challenger)
    assert result.recommendation == PROMOTE


def test_the_reply_is_json_with_the_rule_written_out() -> None:
    import json

    field_ = races(40)
    result = compare(
        field_.served(field_.model(1.0, 1)),
        field_.served(field_.model(1.0, 2)),
        field_.results.iloc[:0],  # no results yet: nothing to pair
        RACES,
    )
    reply = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert reply["races"] == 0 and reply["recommendation"] == NOT_ENOUGH
    assert reply["metrics"][0]["low"] is None
    assert "'promote'" in reply["rule"] and reply["resamples"] == 2000
