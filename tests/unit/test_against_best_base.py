"""The stack against its best base on the judged rows: races whose finishing order is
drawn from known chances, and models whose predictions are those chances blurred by more
or less noise, so which model is better is known before comparing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from gallop.models.stack import softmax_within_groups
from gallop.training.rows import Rows
from gallop.training.stacking import Judged, against_best_base

RACES, FIELD = 800, 8


def races(seed: int = 3) -> tuple[Rows, np.ndarray]:
    """Rows of RACES races and each runner's true win chance; the finishing order is drawn
    from those chances (a Plackett-Luce draw: the winner first, then the rest)."""
    rng = np.random.default_rng(seed)
    strength = rng.normal(0.0, 1.0, RACES * FIELD)
    sizes = np.full(RACES, FIELD)
    chance = softmax_within_groups(strength, sizes)
    keys = np.log(rng.random(RACES * FIELD)) / np.exp(strength)  # Gumbel-max by race
    position = np.empty(RACES * FIELD)
    for race in range(RACES):
        part = slice(race * FIELD, (race + 1) * FIELD)
        position[part] = np.argsort(np.argsort(-keys[part])) + 1
    frame = pd.DataFrame(
        {"race": np.repeat(np.arange(RACES), FIELD), "position": position, "x": strength}
    )
    manifest: Any = {
        "task": "ranking",
        "group": "race",
        "target": "position",
        "target_order": "ascending",
        "features": ["x"],
    }
    return Rows.of(frame, manifest, training=False), chance


def blurred(chance: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """The chances with noise on their log: a worse model the more noise."""
    rng = np.random.default_rng(seed)
    score = np.log(chance) + rng.normal(0.0, noise, len(chance))
    return softmax_within_groups(score, np.full(RACES, FIELD))


def judged(rows: Rows, predictions: dict[str, np.ndarray]) -> Judged:
    return Judged({}, {}, predictions, None, rows, True)  # type: ignore[arg-type]


def against_the_truth(stack_noise: float, other_noise: float) -> tuple[dict[str, Any], Rows, Any]:
    """A stack, a base blurred by other_noise, and a base that is the true chances."""
    rows, chance = races()
    predictions = {
        "stack": blurred(chance, stack_noise, 1),
        "base_0_other": blurred(chance, other_noise, 2),
        "base_1_truth": chance,
    }
    return against_best_base(judged(rows, predictions)), rows, chance


def test_a_stack_far_worse_than_a_base_is_below_it_on_every_metric() -> None:
    # GIVEN a base that knows the true chances, another that nearly does, and a stack
    # whose chances are mostly noise
    against, _, _ = against_the_truth(stack_noise=2.0, other_noise=0.3)
    # THEN every metric names the truth as the best base and finds the stack below it:
    # the whole interval of its advantage lies under zero
    assert [m["metric"] for m in against["metrics"]] == [
        "race_log_loss",
        "ndcg@1",
        "ndcg@3",
        "top1_hit_rate",
    ]
    assert against["unit"] == "race" and not against["not_below"]
    for m in against["metrics"]:
        assert m["base"] == "base_1_truth" and m["units"] == RACES
        assert m["advantage"] < 0 and m["low"] <= m["advantage"] <= m["high"] < 0
        assert not m["not_below"]


def test_a_stack_level_with_its_best_base_is_not_below_it() -> None:
    # GIVEN a stack that is a slightly blurred copy of the truth, and the truth as a base
    against, rows, chance = against_the_truth(stack_noise=0.05, other_noise=1.5)
    # THEN its point figures may fall either side of the truth's, but no interval lies
    # wholly below zero: not below
    loss = against["metrics"][0]
    assert loss["metric"] == "race_log_loss" and loss["base"] == "base_1_truth"
    assert loss["low"] < 0 < loss["high"] and loss["best_base"] == pytest.approx(
        -np.mean(np.log(chance[rows.share > 0])), rel=1e-9
    )
    assert against["not_below"] and all(m["not_below"] for m in against["metrics"])


def test_without_groups_each_row_is_a_unit_and_the_best_base_is_chosen_per_metric() -> None:
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.05, 0.95, 3000)
    y = (rng.random(3000) < truth).astype(float)
    manifest: Any = {"task": "binary", "target": "y", "features": ["x"]}
    rows = Rows.of(pd.DataFrame({"x": truth, "y": y}), manifest, training=False)
    # GIVEN a base that is the truth, one that is sure of everything (a log loss that one
    # confident miss ruins), and a stack between them
    sure = np.clip(np.round(truth), 0.001, 0.999)
    against = against_best_base(
        judged(rows, {"stack": 0.5 * truth + 0.25, "base_0_sure": sure, "base_1_truth": truth})
    )
    assert against["unit"] == "row"
    by_metric = {m["metric"]: m for m in against["metrics"]}
    assert set(by_metric) == {"log_loss", "brier"}
    assert by_metric["log_loss"]["base"] == "base_1_truth"
    assert by_metric["log_loss"]["units"] == 3000
    # the shrunk stack is worse than the truth by a margin 3,000 rows settle
    assert not by_metric["log_loss"]["not_below"] and by_metric["log_loss"]["high"] < 0
