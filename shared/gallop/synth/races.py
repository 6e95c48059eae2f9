"""Realistic generated race history, with the true win probability of every runner.

Each runner's performance is a deterministic strength plus Gumbel noise. With Gumbel
noise the chance of finishing first is exactly the softmax of strength / noise
scale, so the best achievable forecast (the oracle) is known; finishing order is a
Plackett-Luce draw. Strength combines a horse's drifting ability and age curve, its
going and distance preferences, the jockey's and trainer's skill, the course's draw
bias and the weight carried. The market's odds are a noisy estimate of the true
chance with a bookmaker's overround.

A `World` changes what the races are drawn from without changing which races are drawn:
the same seed gives the same races, runners and finishing order in any world (every
random draw is the same; a world only scales or shifts some of them), so a changed world
is the same history with one thing changed (drift checks are tested on that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GOINGS = ["firm", "good", "good-to-soft", "soft", "heavy"]
COURSES = [
    "ascot",
    "bath",
    "chester",
    "doncaster",
    "epsom",
    "goodwood",
    "haydock",
    "kempton",
    "newbury",
    "newmarket",
    "sandown",
    "york",
]
DISTANCES_M = np.array([1000, 1200, 1400, 1600, 2000, 2400, 2800, 3200])
NOISE_SCALE = 1.0
START = np.datetime64("2019-01-01T00:00")
REST_MINUTES = 7 * 24 * 60  # a horse runs at most once a week
MARKET_NOISE = 0.35  # sd of the market's error on a runner's log chance


@dataclass(frozen=True)
class World:
    """What the races are drawn from. market_sharpness: the market's log chances are the
    true ones times this, plus its error (above 1, a sharper market: shorter favourites,
    longer outsiders, surer than the truth). market_noise: the size of that error.
    weight_shift_kg: every weight carried moves by this (and its limits with it); within
    a race all move alike, so the result does not."""

    market_sharpness: float = 1.0
    market_noise: float = MARKET_NOISE
    weight_shift_kg: float = 0.0

    def __post_init__(self) -> None:
        if not self.market_sharpness > 0:
            raise ValueError(f"market_sharpness must be above 0, not {self.market_sharpness}")
        if not self.market_noise >= 0:
            raise ValueError(f"market_noise must be at least 0, not {self.market_noise}")


@dataclass
class _Pool:
    ability: np.ndarray
    birth_year: np.ndarray
    going_pref: np.ndarray  # index into GOINGS
    best_distance: np.ndarray  # metres
    runs_left: np.ndarray
    trainer: np.ndarray
    horse_id: np.ndarray


def _new_horses(rng: np.random.Generator, n: int, first_id: int, year: int, n_trainers: int):
    return dict(
        ability=rng.normal(0.0, 0.8, n),
        birth_year=year - rng.integers(2, 4, n),
        going_pref=rng.integers(0, len(GOINGS), n),
        best_distance=rng.choice(DISTANCES_M, n),
        runs_left=rng.integers(5, 41, n),
        trainer=rng.integers(0, n_trainers, n),
        horse_id=np.arange(first_id, first_id + n),
    )


def generate_races(
    n_races: int, seed: int = 0, world: World | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (runners, truth): one row per runner, and each runner's true win chance."""
    world = world or World()
    if n_races < 1:
        raise ValueError("n_races must be at least 1")
    rng = np.random.default_rng(seed)
    n_jockeys, n_trainers = 60, 40
    jockey_skill = rng.normal(0.0, 0.25, n_jockeys)
    trainer_skill = rng.normal(0.0, 0.2, n_trainers)
    draw_bias = rng.normal(0.0, 0.03, len(COURSES))  # per stall, per course
    pool_size = max(40, n_races // 2)
    pool = _Pool(**_new_horses(rng, pool_size, 0, 2019, n_trainers))
    next_id = pool_size

    # Racing days over roughly five years; off times every 5 minutes from 12:00 to 20:30.
    days = rng.integers(0, 5 * 365, n_races)
    off = 12 * 60 + 5 * rng.integers(0, 103, n_races)
    minutes = np.sort(days * 24 * 60 + off)
    race_times = START + minutes.astype("timedelta64[m]")
    last_run = np.full(pool_size, -(10**9))  # minute of each pool horse's last run
    columns: dict[str, list] = {
        k: []
        for k in (
            "race_id",
            "race_time",
            "course",
            "distance_m",
            "going",
            "race_class",
            "horse_id",
            "jockey_id",
            "trainer_id",
            "draw",
            "weight_kg",
            "age",
            "odds",
            "position",
        )
    }
    truth_p: list[np.ndarray] = []

    for r in range(n_races):
        when = race_times[r]
        year = int(str(when)[:4])
        course = int(rng.integers(len(COURSES)))
        distance = int(rng.choice(DISTANCES_M))
        going = int(min(len(GOINGS) - 1, max(0, rng.normal(1.5, 1.1))))
        race_class = int(rng.integers(1, 7))
        field = int(rng.integers(5, 17))
        rested = np.flatnonzero(last_run <= minutes[r] - REST_MINUTES)
        if len(rested) >= field:
            runners = rng.choice(rested, field, replace=False)
        else:  # a short pool: the longest rested run again
            runners = np.argsort(last_run, kind="stable")[:field]
        last_run[runners] = minutes[r]
        jockeys = rng.choice(n_jockeys, field, replace=False)
        draws = rng.permutation(field) + 1

        age = year - pool.birth_year[runners]
        age_curve = -0.08 * (age - 5.0) ** 2
        going_fit = -0.25 * np.abs(pool.going_pref[runners] - going)
        distance_fit = -0.35 * np.abs(np.log(pool.best_distance[runners] / distance))
        # Handicapping: better horses carry more weight, which costs them a little.
        weight = np.round(
            np.clip(57 + 3.0 * pool.ability[runners] + rng.normal(0, 1.0, field), 50, 63), 1
        )
        strength = (
            pool.ability[runners]
            + age_curve
            + going_fit
            + distance_fit
            + jockey_skill[jockeys]
            + trainer_skill[pool.trainer[runners]]
            + draw_bias[course] * draws
            - 0.04 * (weight - 57)
        )
        logits = strength / NOISE_SCALE
        p_true = np.exp(logits - logits.max())
        p_true /= p_true.sum()
        performance = strength + rng.gumbel(0.0, NOISE_SCALE, field)
        position = np.empty(field, dtype=int)
        position[np.argsort(-performance)] = np.arange(1, field + 1)

        market = world.market_sharpness * logits + rng.normal(0.0, world.market_noise, field)
        p_market = np.exp(market - market.max())
        p_market /= p_market.sum()
        overround = 1.0 + rng.uniform(0.12, 0.25)
        odds = np.clip(np.round(1.0 / (p_market * overround), 2), 1.01, 1000.0)

        columns["race_id"].extend([f"R{r:07d}"] * field)
        columns["race_time"].extend([str(when)] * field)
        columns["course"].extend([COURSES[course]] * field)
        columns["distance_m"].extend([distance] * field)
        columns["going"].extend([GOINGS[going]] * field)
        columns["race_class"].extend([race_class] * field)
        columns["horse_id"].extend(f"H{h:06d}" for h in pool.horse_id[runners])
        columns["jockey_id"].extend(f"J{j:03d}" for j in jockeys)
        columns["trainer_id"].extend(f"T{t:03d}" for t in pool.trainer[runners])
        columns["draw"].extend(draws.tolist())
        columns["weight_kg"].extend(np.round(weight + world.weight_shift_kg, 1).tolist())
        columns["age"].extend(age.tolist())
        columns["odds"].extend(odds.tolist())
        columns["position"].extend(position.tolist())
        truth_p.append(p_true)

        # Careers move on: ability drifts with every run, and retired horses are replaced.
        pool.ability[runners] += rng.normal(0.0, 0.05, field)
        pool.runs_left[runners] -= 1
        retired = runners[pool.runs_left[runners] <= 0]
        if retired.size:
            fresh = _new_horses(rng, retired.size, next_id, year, n_trainers)
            next_id += retired.size
            for name, values in fresh.items():
                getattr(pool, name)[retired] = values
            last_run[retired] = -(10**9)

    runners_df = pd.DataFrame(columns)
    truth = runners_df[["race_id", "horse_id"]].copy()
    truth["true_win_probability"] = np.concatenate(truth_p)
    return runners_df, truth


def truth_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".truth.csv")


def write_races(n_races: int, seed: int, out: Path) -> tuple[Path, Path]:
    """Write the runners CSV and, beside it, the true win probabilities."""
    runners, truth = generate_races(n_races, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    runners.to_csv(out, index=False, lineterminator="\n")
    truth_out = truth_path_for(out)
    truth.to_csv(truth_out, index=False, float_format="%.8f", lineterminator="\n")
    return out, truth_out
