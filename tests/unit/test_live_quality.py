"""Live quality: captured rows joined with results give the figures an offline computation
on the same rows gives, and rows that cannot be joined are counted, never guessed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from gallop.models.stack import softmax_within_groups
from gallop.monitoring.quality import (
    CannotJoin,
    JoinCounts,
    live_quality,
)
from gallop.monitoring.status import relative_drop, window_value
from gallop.spec import DatasetSpec
from gallop.training.metrics import binary_metrics, ranking_metrics, regression_metrics

RACES = DatasetSpec(
    name="races",
    task="ranking",
    target="position",
    target_order="ascending",
    group="race_id",
    entity="horse_id",
    odds="odds",
    features=["odds"],
)


@dataclass
class Captured:
    """The shape gallop.monitoring.capture.read_captured hands over."""

    at: np.ndarray
    group: np.ndarray
    entity: np.ndarray
    score: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    request_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.request_id is None:  # one request per race (ungrouped: per row)
            self.request_id = np.array(
                [
                    f"q-{e}" if g is None else f"q-{g}"
                    for g, e in zip(self.group, self.entity, strict=True)
                ],
                dtype=object,
            )

    def __len__(self) -> int:
        return len(self.score)


def served_races(n_races: int, seed: int = 3) -> tuple[Captured, pd.DataFrame]:
    """Races served over three days, and their results (positions and odds)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 9, n_races)
    race = np.repeat([f"R{i:04d}" for i in range(n_races)], sizes)
    horse = np.array([f"H{i:05d}" for i in range(len(race))], dtype=object)
    score = rng.normal(size=len(race))
    win = softmax_within_groups(score, sizes)
    start = np.datetime64("2026-12-01T00:30:00", "us")
    at = np.repeat(start + (np.arange(n_races) * 3 * 3600 * 10**6 // 2), sizes)  # 16/day
    position = np.concatenate([rng.permutation(n) + 1 for n in sizes]).astype(float)
    odds = np.round(1.0 / np.clip(win * rng.uniform(0.7, 1.1, len(win)), 0.01, 0.95), 2)
    captured = Captured(at, race.astype(object), horse, score, {"win_probability": win})
    results = pd.DataFrame({"race_id": race, "horse_id": horse, "position": position, "odds": odds})
    return captured, results


def offline(captured: Captured, results: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The same metrics computed by hand: join, a day per race, the metric functions."""
    frame = pd.DataFrame(
        {
            "race_id": captured.group,
            "horse_id": captured.entity,
            "at": captured.at,
            "score": captured.score,
            "p": captured.outputs["win_probability"],
        }
    ).merge(results, on=["race_id", "horse_id"])
    frame["day"] = frame.groupby("race_id")["at"].transform("min").dt.strftime("%Y-%m-%d")
    out = {}
    for day, rows in frame.groupby("day"):
        sizes = rows.groupby("race_id", sort=False).size().to_numpy()
        share = (rows["position"] == 1).to_numpy(float)
        relevance = np.clip(4 - rows["position"].to_numpy(), 0, None)
        score = rows["score"].to_numpy()
        metrics = ranking_metrics(score, rows["p"].to_numpy(), relevance, share, sizes)
        top = rows.loc[rows.groupby("race_id", sort=False)["score"].idxmax()]
        metrics["top1_roi"] = float(((top["position"] == 1) * top["odds"] - 1).mean())
        out[str(day)] = metrics
    return out


def test_live_metrics_equal_the_offline_computation_on_the_same_rows() -> None:
    captured, results = served_races(48)
    quality = live_quality(captured, results, RACES)
    expected = offline(captured, results)
    assert [d.day for d in quality.days] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    for day in quality.days:
        assert day.groups == 16
        assert set(day.metrics) >= {"race_log_loss", "ndcg@1", "ndcg@3", "ndcg@4", "ece"}
        assert set(day.metrics) >= {"top1_hit_rate", "top1_roi"}
        for name, value in expected[day.day].items():
            assert day.metrics[name] == pytest.approx(value, abs=1e-12), (day.day, name)
    assert quality.counts == JoinCounts(captured=len(captured), scored=len(captured))
    assert sum(b["count"] for b in quality.calibration) == len(captured)


def test_race_log_loss_and_top1_by_hand() -> None:
    # GIVEN two races on one day: the favourite wins the first, the outsider the second
    captured = Captured(
        at=np.full(5, np.datetime64("2026-12-06T12:00:00", "us")),
        group=np.array(["A", "A", "A", "B", "B"], dtype=object),
        entity=np.array(["a1", "a2", "a3", "b1", "b2"], dtype=object),
        score=np.array([2.0, 1.0, 0.0, 1.0, 0.0]),
        outputs={"win_probability": np.array([0.5, 0.3, 0.2, 0.8, 0.2])},
    )
    results = pd.DataFrame(
        {
            "race_id": ["A", "A", "A", "B", "B"],
            "horse_id": ["a1", "a2", "a3", "b1", "b2"],
            "position": [1, 2, 3, 2, 1],
            "odds": [2.5, 3.0, 6.0, 1.5, 4.0],
        }
    )
    (day,) = live_quality(captured, results, RACES).days
    # THEN −log of the winners' probabilities, the favourite's hit rate, its bets' return
    assert day.metrics["race_log_loss"] == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 2)
    assert day.metrics["top1_hit_rate"] == 0.5
    assert day.metrics["top1_roi"] == pytest.approx(((2.5 - 1) + (0 - 1)) / 2)
    assert day.metrics["ndcg@1"] == pytest.approx((1 + 3 / 7) / 2)  # B: 2^2-1 over 2^3-1


def test_runners_without_results_and_unfinished_races_are_counted_not_guessed() -> None:
    captured, results = served_races(6, seed=5)
    races = list(dict.fromkeys(captured.group))
    entity = captured.entity.copy()
    group_rows = {r: np.flatnonzero(captured.group == r) for r in races}
    # race 1: one runner has no result; race 2: not run yet; race 3: a runner served twice;
    # race 4: a runner without an id; race 5: a runner in the results nobody asked about
    results = results[results["horse_id"] != entity[group_rows[races[1]][0]]]
    results = results[results["race_id"] != races[2]]
    entity[group_rows[races[3]][1]] = entity[group_rows[races[3]][0]]
    entity[group_rows[races[4]][2]] = None
    last = group_rows[races[5]][-1]
    kept = np.arange(len(entity)) != last
    captured = Captured(
        captured.at[kept],
        captured.group[kept],
        entity[kept],
        captured.score[kept],
        {"win_probability": captured.outputs["win_probability"][kept]},
    )
    quality = live_quality(captured, results, RACES)

    sizes = {r: len(group_rows[r]) for r in races}
    assert quality.counts == JoinCounts(
        captured=len(captured),
        scored=sizes[races[0]] + sizes[races[5]] - 1,
        no_key=sizes[races[4]],
        ambiguous=sizes[races[3]],
        pending=sizes[races[2]],
        without_result=sizes[races[1]],
        partial_races=1,
    )
    (day,) = quality.days
    assert day.groups == 2
    # the race log loss rests on the whole race only; the other figures on both
    whole = captured.group == races[0]
    winner = whole & np.isin(captured.entity, results.loc[results["position"] == 1, "horse_id"])
    p = captured.outputs["win_probability"][winner]
    assert day.metrics["race_log_loss"] == pytest.approx(-math.log(p[0]))


def test_a_day_with_no_finished_race_has_no_figures() -> None:
    captured, results = served_races(3)
    quality = live_quality(captured, results.iloc[0:0], RACES)
    assert quality.days == [] and quality.counts.pending == len(captured)
    nothing = Captured(captured.at[:0], captured.group[:0], captured.entity[:0], captured.score[:0])
    assert live_quality(nothing, results, RACES).counts == JoinCounts()


def test_ungrouped_binary_joins_by_the_row_id_the_client_sent() -> None:
    spec = DatasetSpec(name="churn", task="binary", target="left", entity="customer")
    rng = np.random.default_rng(1)
    n = 300
    ids = np.arange(n)
    probability = rng.uniform(size=n)
    y = (rng.uniform(size=n) < probability).astype(float)
    at = np.datetime64("2026-12-05T23:00:00", "us") + ids * 20 * 10**6  # crosses midnight
    captured = Captured(
        at,
        np.full(n, None, dtype=object),
        np.array([str(i) for i in ids], dtype=object),
        np.log(probability / (1 - probability)),
        {"probability": probability},
    )
    # integer ids that went through a float column are still the ids the client sent
    results = pd.DataFrame({"customer": ids[: n - 10].astype(float), "left": y[: n - 10]})
    quality = live_quality(captured, results, spec)
    assert quality.counts.pending == 10 and quality.counts.scored == n - 10
    day_of = pd.to_datetime(at[: n - 10]).strftime("%Y-%m-%d").to_numpy()
    for day in quality.days:
        mask = day_of == day.day
        assert day.rows == day.groups == int(mask.sum())
        for name, value in binary_metrics(probability[: n - 10][mask], y[: n - 10][mask]).items():
            assert day.metrics[name] == pytest.approx(value, abs=1e-12)


def test_regression_rmse_and_interval_coverage_use_the_served_interval() -> None:
    spec = DatasetSpec(name="times", task="regression", target="seconds", entity="run")
    value = np.array([10.0, 12.0, 14.0, 9.0])
    lower, upper = value - 1.0, value + 1.0
    y = np.array([10.5, 13.5, 14.0, 9.0])  # the second falls outside its interval
    captured = Captured(
        np.full(4, np.datetime64("2026-12-06T08:00:00", "us")),
        np.full(4, None, dtype=object),
        np.array(["r1", "r2", "r3", "r4"], dtype=object),
        value,
        {"value": value, "lower": lower, "upper": upper},
    )
    results = pd.DataFrame({"run": ["r1", "r2", "r3", "r4"], "seconds": y})
    (day,) = live_quality(captured, results, spec).days
    assert day.metrics["coverage"] == 0.75
    assert day.metrics["rmse"] == pytest.approx(math.sqrt((0.25 + 2.25) / 4))
    assert day.metrics == pytest.approx(regression_metrics(value, y, lower, upper))


def test_a_dataset_without_an_entity_column_cannot_be_joined() -> None:
    spec = DatasetSpec(name="plain", task="binary", target="y")
    captured = Captured(np.array([], "datetime64[us]"), *(np.array([], object),) * 2, np.zeros(0))
    with pytest.raises(CannotJoin, match="entity"):
        live_quality(captured, pd.DataFrame({"y": []}), spec)


def test_the_drop_against_training_knows_which_way_is_worse() -> None:
    assert relative_drop("ndcg@4", 0.57, 0.60) == pytest.approx(0.05)
    assert relative_drop("race_log_loss", 2.1, 2.0) == pytest.approx(0.05)
    assert relative_drop("auc", 0.8, 0.7) < 0
    assert math.isnan(relative_drop("auc", math.nan, 0.7))
    days = [("2026-12-01", 10, 0.5), ("2026-12-02", 30, 0.7), ("2026-12-03", 0, None)]
    assert window_value(days, "2026-12-01") == pytest.approx(0.65)
    assert window_value(days, "2026-12-02") == pytest.approx(0.7)
    assert math.isnan(window_value(days, "2026-12-04"))


def test_a_winner_nobody_asked_about_still_won() -> None:
    # GIVEN a race whose winner was not in the request: the runner-up is no winner
    captured = Captured(
        at=np.full(2, np.datetime64("2026-12-06T12:00:00", "us")),
        group=np.array(["A", "A"], dtype=object),
        entity=np.array(["a2", "a3"], dtype=object),
        score=np.array([1.0, 0.0]),
        outputs={"win_probability": np.array([0.7, 0.3])},
    )
    results = pd.DataFrame(
        {"race_id": ["A"] * 3, "horse_id": ["a1", "a2", "a3"], "position": [1, 2, 3]}
    )
    quality = live_quality(captured, results, RACES)
    (day,) = quality.days
    assert quality.counts.partial_races == 1 and quality.counts.scored == 2
    assert math.isnan(day.metrics["top1_hit_rate"])  # no decided race among those served
    assert math.isnan(day.metrics["race_log_loss"])
    assert day.metrics["ndcg@1"] == pytest.approx(3 / 3)  # a2 (2nd, 2^2-1) first of the two


def ndcg_by_definition(scores, relevance, sizes, k):  # type: ignore[no-untyped-def]
    """NDCG@k group by group, as LightGBM defines it (the loop the metric once was)."""
    total, start = 0.0, 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for size in sizes:
        rel = relevance[start : start + size]
        order = np.argsort(-scores[start : start + size], kind="stable")[:k]
        ideal = np.sort(rel)[::-1][:k]
        best = float(((2.0**ideal - 1) * discounts[: len(ideal)]).sum())
        got = float(((2.0 ** rel[order] - 1) * discounts[: len(order)]).sum())
        total += got / best if best > 0 else 1.0
        start += size
    return total / len(sizes)


@pytest.mark.parametrize("k", [1, 3, 4, 10])
def test_vectorised_ndcg_equals_its_definition(k: int) -> None:
    from gallop.training.metrics import ndcg_at_k

    rng = np.random.default_rng(k)
    sizes = rng.integers(0, 12, 500)  # empty groups and groups smaller than k too
    n = int(sizes.sum())
    scores = np.round(rng.normal(size=n), 1)  # ties: the earlier row ranks first
    relevance = np.where(rng.random(n) < 0.3, 0.0, rng.integers(0, 4, n).astype(float))
    assert ndcg_at_k(scores, relevance, sizes, k) == pytest.approx(
        ndcg_by_definition(scores, relevance, sizes, k), abs=1e-12
    )


def test_a_race_served_again_is_judged_on_its_last_answer() -> None:
    # GIVEN 12 races served once, then the first race asked for again an hour later, when
    # the model answered otherwise (the odds had moved)
    captured, results = served_races(12)
    first = captured.group == captured.group[0]
    n, win = int(first.sum()), captured.outputs["win_probability"]
    again = Captured(
        at=np.concatenate([captured.at, captured.at[first] + np.timedelta64(3600, "s")]),
        group=np.concatenate([captured.group, captured.group[first]]),
        entity=np.concatenate([captured.entity, captured.entity[first]]),
        score=np.concatenate([captured.score, captured.score[first][::-1]]),
        outputs={"win_probability": np.concatenate([win, win[first][::-1]])},
        request_id=np.concatenate([captured.request_id, np.full(n, "q-later", dtype=object)]),
    )
    # WHEN its results are in THEN the race counts once, with the later answer
    quality = live_quality(again, results, RACES)
    assert quality.counts.repeated == n and quality.counts.scored == len(captured)
    assert quality.counts.ambiguous == 0
    last = Captured(
        at=np.concatenate([again.at[len(captured) :], captured.at[~first]]),
        group=np.concatenate([again.group[len(captured) :], captured.group[~first]]),
        entity=np.concatenate([again.entity[len(captured) :], captured.entity[~first]]),
        score=np.concatenate([again.score[len(captured) :], captured.score[~first]]),
        outputs={
            "win_probability": np.concatenate(
                [
                    again.outputs["win_probability"][len(captured) :],
                    captured.outputs["win_probability"][~first],
                ]
            )
        },
    )
    expected = offline(last, results)
    for day in quality.days:
        for name, value in expected[day.day].items():
            assert day.metrics[name] == pytest.approx(value, abs=1e-12), (day.day, name)
