"""TreeExplainer (numpy only) returns what LightGBM's pred_contrib=True returns, for the
objectives gallop trains, including LightGBM's routing of NaN, zeros and float32 values."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from gallop.serving.treeshap import TreeExplainer

TOLERANCE = 1e-6  # raw-score space
N_FEATURES = 8
RF = {"boosting": "rf", "bagging_fraction": 0.632, "bagging_freq": 1, "feature_fraction": 0.8}
MODELS = {
    "regression": {"objective": "regression"},
    "binary": {"objective": "binary"},
    "lambdarank": {"objective": "lambdarank"},
    "rf": {"objective": "regression", **RF},
    "zero_as_missing": {"objective": "regression", "zero_as_missing": True},
    # Feature 7's codes as categories: set-membership splits
    "categorical": {"objective": "regression", "min_data_per_group": 5, "cat_smooth": 1},
}
CATEGORICAL = 7


def features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Feature 0 has no NaN in training (missing_type None), 1 and 2 have NaNs (NaN),
    4 is often exactly zero (Zero when zero_as_missing), 5 is constant (never split on),
    7 holds whole-number codes 0..14, some missing (a category, for the categorical model)."""
    x = rng.normal(size=(n, N_FEATURES))
    x[rng.random(n) < 0.2, 1] = np.nan
    x[rng.random(n) < 0.1, 2] = np.nan
    x[rng.random(n) < 0.3, 4] = 0.0
    x[:, 5] = 2.5
    x[:, CATEGORICAL] = np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 15, n))
    return x


def train(name: str, n_trees: int = 100, **extra: Any) -> lgb.Booster:
    rng = np.random.default_rng(7)
    x = features(rng, 600)
    signal = x[:, 0] + np.nan_to_num(x[:, 1], nan=1.5) * x[:, 3] + (x[:, 4] == 0) - x[:, 6] ** 2
    signal += np.isin(x[:, CATEGORICAL], [1, 4, 9, 10]) * (1 + x[:, 0])
    noisy = signal + rng.normal(scale=0.3, size=len(x))
    label, group = noisy, None
    if name == "binary":
        label = (noisy > np.median(noisy)).astype(float)
    if name == "lambdarank":
        label, group = np.digitize(noisy, np.quantile(noisy, [0.5, 0.75, 0.9])), [12] * 50
    params = {**MODELS[name], "num_leaves": 31, "min_data_in_leaf": 5, "verbose": -1, **extra}
    categorical = [CATEGORICAL] if name == "categorical" else "auto"
    data = lgb.Dataset(x, label, group=group, categorical_feature=categorical)
    return lgb.train(params, data, num_boost_round=n_trees)


def splits(dump: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [tree["tree_structure"] for tree in dump["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            yield node
            stack += [node["left_child"], node["right_child"]]


def lightgbm_contributions(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    # LightGBM sums the trees in pred_contrib and raw_score even in random-forest mode (only
    # predict() divides by the number of trees); the explainer gives the averaged output's parts.
    scale = booster.num_trees() if booster.params.get("boosting") == "rf" else 1
    return booster.predict(x, pred_contrib=True) / scale


@pytest.fixture(scope="module", params=list(MODELS))
def booster(request: pytest.FixtureRequest) -> lgb.Booster:
    return train(request.param)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    x = features(np.random.default_rng(11), 60)
    x[::4, 0] = np.nan  # feature 0 never saw NaN: LightGBM reads it as 0.0
    x[1::5, 1] = np.nan
    # a code never seen, a negative one, and a missing one: all go right at a category split
    x[2::6, CATEGORICAL], x[3::6, CATEGORICAL], x[4::6, CATEGORICAL] = 40, -1, np.nan
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_contributions_equal_lightgbm(booster: lgb.Booster, rows: np.ndarray, dtype: type) -> None:
    x = rows.astype(dtype)
    ours = TreeExplainer(booster.dump_model()).contributions(x)
    assert ours.shape == (len(x), N_FEATURES + 1) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, lightgbm_contributions(booster, x), rtol=0, atol=TOLERANCE)
    assert np.all(ours[:, 5] == 0.0)  # the constant feature


def test_models_exercise_every_missing_type() -> None:
    types = {split["missing_type"] for split in splits(train("regression", 20).dump_model())}
    assert {"None", "NaN"} <= types
    assert "Zero" in {s["missing_type"] for s in splits(train("zero_as_missing", 20).dump_model())}
    category_splits = [
        s for s in splits(train("categorical", 20).dump_model()) if s["decision_type"] == "=="
    ]
    assert any("||" in str(s["threshold"]) for s in category_splits)  # sets, not one code


def test_rows_sum_to_the_raw_score(booster: lgb.Booster, rows: np.ndarray) -> None:
    explainer = TreeExplainer(booster.dump_model())
    raw = booster.predict(rows, raw_score=True)
    if booster.params.get("boosting") == "rf":
        # GIVEN LightGBM's random forest: predict() is the mean of the trees, raw_score the sum
        assert booster.params["objective"] == "regression"
        np.testing.assert_allclose(booster.predict(rows), raw / booster.num_trees())
        raw = booster.predict(rows)
    parts = explainer.contributions(rows)
    np.testing.assert_allclose(parts.sum(axis=1), raw, rtol=0, atol=TOLERANCE)
    assert parts[0, -1] == explainer.expected_value
    np.testing.assert_allclose(
        explainer.expected_value, lightgbm_contributions(booster, rows)[0, -1]
    )


def test_values_between_a_threshold_and_its_float32_rounding_route_as_lightgbm() -> None:
    # GIVEN a tree's root threshold t whose float32 rounding lies above it: LightGBM compares
    # in double, so float32(t) goes right although float32(t) <= float32(t) in float32
    booster = train("regression")
    dump = booster.dump_model()
    roots = [tree["tree_structure"] for tree in dump["tree_info"]]
    # (float() first: numpy would compare a float32 with a Python float in float32)
    root = next(
        r for r in roots if "threshold" in r and float(np.float32(r["threshold"])) > r["threshold"]
    )
    t, feature = root["threshold"], root["split_feature"]
    above = np.float32(t)
    below = np.nextafter(above, np.float32(-np.inf))
    x32 = np.repeat(features(np.random.default_rng(3), 1).astype(np.float32), 4, axis=0)
    x32[:, feature] = [above, below, above, below]
    x64 = x32.astype(np.float64)
    x64[2:, feature] = [np.nextafter(t, np.inf), t]  # and float64 values either side of t
    # WHEN both are explained THEN they match LightGBM, which sends the two sides apart
    explainer = TreeExplainer(dump)
    for x in (x32, x64):
        expected = booster.predict(x, pred_contrib=True)
        assert not np.allclose(expected[0], expected[1])
        np.testing.assert_allclose(explainer.contributions(x), expected, rtol=0, atol=TOLERANCE)


def test_values_within_lightgbms_zero_threshold_are_zero() -> None:
    # GIVEN a split at -kZeroThreshold: LightGBM drops |value| <= 1e-35f before routing, so
    # -1e-35f goes right as 0.0 would, although -1e-35f <= -1e-35f
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    x[:, 0] = np.where(rng.random(400) < 0.5, -1.0, 0.0)
    booster = lgb.train(
        {"num_leaves": 4, "verbose": -1}, lgb.Dataset(x, 3 * x[:, 0]), num_boost_round=3
    )
    tiny = float(np.float32(1e-35))
    assert booster.dump_model()["tree_info"][0]["tree_structure"]["threshold"] == -tiny
    rows = np.array([[-tiny, 0.0], [-2 * tiny, 0.0], [0.0, 0.0]])
    expected = booster.predict(rows, pred_contrib=True)
    assert expected[0, 0] == expected[2, 0] != expected[1, 0]
    ours = TreeExplainer(booster.dump_model()).contributions(rows)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"objective": "multiclass", "num_class": 3}, "multiclass"),
        ({"objective": "regression", "linear_tree": True}, "linear"),
    ],
)
def test_unsupported_models_raise(params: dict[str, Any], message: str) -> None:
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(size=300), rng.integers(0, 6, 300)])
    y = x[:, 0] + (x[:, 1] % 2) * 3
    if params["objective"] == "multiclass":
        y = x[:, 1] % 3
    data = lgb.Dataset(x, y)
    booster = lgb.train({**params, "verbose": -1, "min_data_per_group": 5}, data, 3)
    with pytest.raises(NotImplementedError, match=message):
        TreeExplainer(booster.dump_model())


def test_timing_of_twelve_rows(rows: np.ndarray) -> None:
    booster = train("regression")
    n_leaves = sum(tree["num_leaves"] for tree in booster.dump_model()["tree_info"])
    explainer = TreeExplainer(booster.dump_model())
    explainer.contributions(rows[:12])
    start = time.perf_counter()
    for _ in range(10):
        explainer.contributions(rows[:12])
    elapsed = (time.perf_counter() - start) / 10
    shape = f"12 rows x {booster.num_trees()} trees ({n_leaves} leaves)"
    print(f"\nTreeSHAP, {shape}: {elapsed * 1e3:.1f} ms")
