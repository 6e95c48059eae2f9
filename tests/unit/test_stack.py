"""The meta-learner: non-negative weights, fitted as a conditional logit per race."""

from __future__ import annotations

import numpy as np
import pytest

from gallop.models.stack import (
    conformal_half_width,
    fit_conditional_logit,
    fit_isotonic,
    fit_linear_stack,
    fit_logistic_stack,
    sigmoid,
    softmax_within_groups,
)


def races(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 17, n)
    return sizes, rng.normal(size=(int(sizes.sum()), 3))


def draw_winners(strength: np.ndarray, sizes: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    performance = strength + rng.gumbel(size=len(strength))  # Gumbel: a softmax per race
    won = np.zeros(len(strength))
    start = 0
    for size in sizes:
        won[start + int(np.argmax(performance[start : start + size]))] = 1
        start += size
    return won


def test_probabilities_sum_to_one_in_every_race_even_with_huge_scores() -> None:
    sizes = np.array([1, 3, 5])
    score = np.array([700.0, 1.0, 2.0, 3.0, -800.0, 0.0, 0.0, 900.0, 1.0])
    p = softmax_within_groups(score, sizes)
    assert np.isfinite(p).all()
    assert np.allclose(np.add.reduceat(p, [0, 1, 4]), 1.0)
    assert p[0] == 1.0  # a race with one runner: probability 1


def test_recovers_the_weights_that_generated_the_winners() -> None:
    sizes, margins = races(1)
    true_weights = np.array([1.2, 0.5, 0.0])
    won = draw_winners(margins @ true_weights, sizes, seed=2)
    fitted = fit_conditional_logit(margins, won, sizes)
    assert np.allclose(fitted.weights, true_weights, atol=0.12), fitted.weights
    # And far better than knowing nothing (every runner equally likely).
    uniform = float(np.mean(np.log(sizes)))
    assert fitted.log_loss < uniform - 0.1


def test_a_base_model_that_points_the_wrong_way_gets_weight_zero() -> None:
    sizes, margins = races(3)
    won = draw_winners(margins @ np.array([1.0, -0.8, 0.3]), sizes, seed=4)
    fitted = fit_conditional_logit(margins, won, sizes)
    assert fitted.weights[1] == 0.0 and (fitted.weights >= 0).all()
    assert fitted.weights[0] > 0.5


def test_dead_heats_share_and_races_without_a_winner_are_ignored() -> None:
    sizes, margins = races(5, n=800)
    won = draw_winners(margins @ np.array([0.9, 0.0, 0.4]), sizes, seed=6)
    won[: sizes[0]] = 0  # the first race has no result
    won[sizes[0] : sizes[0] + 2] = 1  # the second race: a dead heat
    fitted = fit_conditional_logit(margins, won, sizes)
    assert np.isfinite(fitted.log_loss) and fitted.weights[0] > fitted.weights[1]
    with pytest.raises(ValueError, match="no race has a winner"):
        fit_conditional_logit(margins, np.zeros(len(won)), sizes)


def test_the_logistic_stack_recovers_weights_and_keeps_them_non_negative() -> None:
    rng = np.random.default_rng(7)
    margins = rng.normal(size=(20000, 3))
    y = (rng.random(20000) < sigmoid(margins @ np.array([1.5, -0.7, 0.4]) - 0.3)).astype(float)
    fitted = fit_logistic_stack(margins, y, l2=0.0)
    assert fitted.weights[1] == 0.0
    assert np.allclose(fitted.weights[[0, 2]], [1.5, 0.4], atol=0.12), fitted.weights
    assert fitted.bias == pytest.approx(-0.3, abs=0.1)


def test_isotonic_pools_adjacent_violators_and_ties() -> None:
    curve = fit_isotonic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, 1.0, 1.0]))
    assert curve.thresholds.tolist() == [1.0, 3.0] and curve.values.tolist() == [0.5, 1.0]
    assert curve(np.array([0.0, 2.5, 3.0, 9.0])).tolist() == [0.5, 0.5, 1.0, 1.0]
    tied = fit_isotonic(np.array([2.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]))
    assert tied.thresholds.tolist() == [1.0, 2.0] and tied.values.tolist() == [0.5, 1.0]
    # Tied scores pool with each other before any violator: the least-squares answer,
    # whatever order the tied rows come in
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0]):
        score, outcome = np.array([0.0, 1.0, 1.0])[order], np.array([0.4, 0.0, 1.0])[order]
        curve = fit_isotonic(score, outcome)
        assert curve(score) == pytest.approx(np.array([0.4, 0.5, 0.5])[order])
    rng = np.random.default_rng(3)
    score = rng.normal(size=500)
    values = fit_isotonic(score, (rng.random(500) < sigmoid(score)).astype(float)).values
    assert (np.diff(values) > 0).all()


def test_conformal_intervals_cover_new_rows_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(11)
    margins = rng.normal(size=(8000, 2))
    y = margins @ np.array([2.0, 0.5]) + 1.0 + rng.standard_t(4, size=8000)
    fitted = fit_linear_stack(margins[:4000], y[:4000], coverage=0.9)
    value = fitted.score(margins[4000:])
    covered = np.abs(y[4000:] - value) <= fitted.half_width
    assert 0.88 <= covered.mean() <= 0.92
    assert conformal_half_width(np.arange(1.0, 11.0), 0.9) == 10.0  # ceil(11 * 0.9) = 10th
    assert conformal_half_width(np.arange(1.0, 101.0), 0.5) == 51.0


@pytest.mark.parametrize("spread", [0.01, 1.0, 150.0])
def test_a_regression_stack_keeps_a_good_margin_whole_whatever_the_units(spread: float) -> None:
    from gallop.models.stack import fit_meta

    # GIVEN a target in some units and one base margin that is it plus a little noise
    rng = np.random.default_rng(9)
    y = spread * rng.normal(size=4000)
    margins = (y + 0.1 * spread * rng.normal(size=4000))[:, None]
    # WHEN the meta-learner is fitted with its default penalty THEN the weight stays near 1
    meta = fit_meta("regression", margins, y)
    assert meta.weights[0] == pytest.approx(0.99, abs=0.02)


def test_an_interval_bound_near_zero_is_held_to_parity_as_its_score_is() -> None:
    """lower = score - half width in float32: near 0 it cancels two large numbers, so its
    error is float32's on them, which parity relative to the bound itself refused (the
    benchmark's diabetes stack: 1.5e-5)."""
    import pandas as pd

    from gallop.models.linear import LinearModel
    from gallop.models.onnx_export import stack_to_onnx
    from gallop.models.stack import Meta
    from gallop.training.rows import Rows
    from gallop.training.stacking import check_parity

    # GIVEN a regression stack of seven bases whose scores sit near its half width
    x = np.linspace(85.0, 95.0, 4001)
    wide = np.full(1, 1e3)
    bases = [
        LinearModel(
            np.full(1, 0.3 * i), np.full(1, 1.1 + i / 7), np.full(1, 0.9), 7.0 + i, -wide, wide
        )
        for i in range(7)
    ]
    weights = np.full(7, 1 / 7 * 1.13)
    manifest = {"task": "regression", "features": ["x"], "identifiers": [], "group": None}
    manifest |= {"time": None, "target": "y", "target_order": None, "categorical": {}}
    rows = Rows.of(pd.DataFrame({"x": x, "y": x}), manifest, training=False)
    margins = np.column_stack([b.margin(rows.features) for b in bases])
    half_width = float(np.median(margins @ weights - 0.37))
    meta = Meta(weights, -0.37, {"kind": "conformal", "half_width": half_width, "coverage": 0.9})
    graph = stack_to_onnx(bases, weights.tolist(), -0.37, 1, meta.calibration)
    # WHEN the graph is checked against the native stack
    outputs = ["score", "margins", "value", "lower", "upper"]
    gaps = check_parity(graph.SerializeToString(), meta, margins, rows, outputs)
    # THEN it passes, the bound's gap measured against what it is made of
    assert gaps["lower"] <= 1e-5
    lower = meta.outputs(meta.score(margins), None)["lower"]
    assert np.abs(lower).min() < 0.01  # some bounds did sit near 0


@pytest.mark.parametrize("loss", ["conditional_logit", "logistic"])
def test_a_linear_fit_started_from_a_nearby_one_reaches_the_same_optimum(loss: str) -> None:
    from gallop.models.linear import fit_linear

    # GIVEN races (or rows) whose outcome follows the features, on their own scales
    sizes, features = races(seed=21, n=1500)
    features = features * np.array([1.0, 30.0, 0.01]) + np.array([0.0, 500.0, -2.0])
    strength = features @ np.array([0.8, -0.01, 40.0])
    if loss == "conditional_logit":
        labels = draw_winners(strength - strength.mean(), sizes, seed=22)
    else:
        rng = np.random.default_rng(23)
        labels = (rng.random(len(strength)) < sigmoid(strength - strength.mean())).astype(float)
    group = sizes if loss == "conditional_logit" else None
    everything = fit_linear(features, labels, loss, 1e-2, group)
    # WHEN a fold of four fifths of the races is fitted from nothing and from the fit on all
    keep = np.repeat(np.arange(len(sizes)) % 5 != 0, sizes)
    part = sizes[np.arange(len(sizes)) % 5 != 0] if group is not None else None
    cold = fit_linear(features[keep], labels[keep], loss, 1e-2, part)
    warm = fit_linear(features[keep], labels[keep], loss, 1e-2, part, near=everything)
    # THEN both are the same model: the loss is convex, only the optimiser's path differs
    assert warm.margin(features) == pytest.approx(cold.margin(features), abs=1e-4)
    assert warm.margin(features) != pytest.approx(everything.margin(features), abs=1e-3)
