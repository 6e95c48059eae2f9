from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gallop.synth.races import generate_races, write_races


@pytest.fixture(scope="module")
def races() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_races(1500, seed=3)


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    a_runners, a_truth = write_races(200, 42, tmp_path / "a" / "races.csv")
    b_runners, b_truth = write_races(200, 42, tmp_path / "b" / "races.csv")
    c_runners, _ = write_races(200, 43, tmp_path / "c" / "races.csv")
    assert a_runners.read_bytes() == b_runners.read_bytes()
    assert a_truth.read_bytes() == b_truth.read_bytes()
    assert a_runners.read_bytes() != c_runners.read_bytes()


def test_races_have_plausible_shape(races: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    runners, _ = races
    sizes = runners.groupby("race_id").size()
    assert sizes.min() >= 5 and sizes.max() <= 16
    # Finishing positions are 1..field size within every race, draws likewise.
    for column in ("position", "draw"):
        ranks = runners.groupby("race_id")[column].apply(
            lambda s: sorted(s) == list(range(1, len(s) + 1))
        )
        assert ranks.all(), column
    assert not runners.duplicated(["race_id", "horse_id"]).any()
    times = pd.to_datetime(runners["race_time"])
    assert (times.max() - times.min()).days > 3 * 365, "race dates span several years"
    assert runners.groupby("horse_id").size().max() > 3, "horses have careers"


def test_odds_carry_a_bookmakers_overround(races: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    runners, _ = races
    book = (1.0 / runners["odds"]).groupby(runners["race_id"]).sum()
    assert 1.05 < book.mean() < 1.35
    assert (runners["odds"] > 1.0).all()


def test_truth_is_a_distribution_per_race_and_beats_the_market(
    races: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    runners, truth = races
    assert np.allclose(truth.groupby("race_id")["true_win_probability"].sum(), 1.0)
    merged = runners.merge(truth, on=["race_id", "horse_id"])
    winners = merged[merged["position"] == 1]
    implied = 1.0 / merged["odds"]
    merged["market"] = implied / implied.groupby(merged["race_id"]).transform("sum")
    market_winners = merged.loc[winners.index, "market"]
    # The oracle's log-likelihood of the winners is higher than the (noisy) market's,
    # and both are far better than picking at random.
    oracle = np.log(winners["true_win_probability"]).mean()
    market = np.log(market_winners).mean()
    uniform = np.log(1.0 / merged.groupby("race_id").size()).mean()
    assert oracle > market > uniform


def test_favourites_win_about_as_often_as_in_real_racing(
    races: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    runners, _ = races
    favourites = runners.loc[runners.groupby("race_id")["odds"].idxmin()]
    assert 0.2 < (favourites["position"] == 1).mean() < 0.45


def test_no_horse_runs_twice_within_a_week(races: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    runners, _ = races
    times = pd.to_datetime(runners["race_time"])
    gaps = times.groupby(runners["horse_id"]).apply(lambda t: t.sort_values().diff().min())
    assert gaps.dropna().min() >= pd.Timedelta(days=7)
