"""ONNX output equals LightGBM's: on real LETOR data (2-decimal features, not float32-exact)
and on generated races through the feature pipeline; and the default conversion does not."""

from __future__ import annotations

import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import benchmarks.letor
from benchmarks.letor import LETOR
from gallop.models.onnx_export import booster_to_onnx, float32_at_or_below, native_margin

TOLERANCE = 1e-5  # margin space
# LightGBM in random-forest mode: its score is the trees' mean, which the export must keep.
RANDOM_FOREST = {
    "objective": "binary",
    "boosting": "rf",
    "bagging_fraction": 0.632,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "verbose": -1,
}


def load_letor(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not (LETOR / name).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the LETOR sample is missing at {LETOR}")
        pytest.skip(f"the LETOR sample is not here ({LETOR}: shared/data sits beside the repo)")
    return benchmarks.letor.load_letor(name)


def onnx_scores(model: object, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return session.run(None, {session.get_inputs()[0].name: features})[0][:, 0].astype(np.float64)


def same_order_within_groups(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> bool:
    start = 0
    for size in groups:
        part = slice(start, start + size)
        if not np.array_equal(
            np.argsort(-a[part], kind="stable"), np.argsort(-b[part], kind="stable")
        ):
            return False
        start += size
    return True


@pytest.fixture(scope="module")
def letor_ranker() -> tuple[lgb.LGBMRanker, np.ndarray, np.ndarray]:
    train, labels, groups = load_letor("rank.train")
    test, _, test_groups = load_letor("rank.test")
    width = max(train.shape[1], test.shape[1])
    train = np.pad(train, ((0, 0), (0, width - train.shape[1])))
    test = np.pad(test, ((0, 0), (0, width - test.shape[1])))
    ranker = lgb.LGBMRanker(verbose=-1)  # LightGBM's defaults, as the baseline is defined
    ranker.fit(train, labels, group=groups)
    return ranker, test, test_groups


def test_letor_ranker_onnx_equals_lightgbm(letor_ranker: tuple) -> None:
    ranker, test, groups = letor_ranker
    native = ranker.booster_.predict(test, raw_score=True)
    exported = onnx_scores(booster_to_onnx(ranker.booster_, test.shape[1]), test)
    assert np.abs(exported - native).max() <= TOLERANCE
    assert same_order_within_groups(exported, native, groups)


def test_the_default_onnxmltools_conversion_would_have_failed(letor_ranker: tuple) -> None:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    ranker, test, groups = letor_ranker
    native = ranker.booster_.predict(test, raw_score=True)
    default = convert_lightgbm(
        ranker,
        initial_types=[("features", FloatTensorType([None, test.shape[1]]))],
        target_opset=15,
    )
    off = np.abs(onnx_scores(default, test) - native)
    # Thresholds rounded to the nearest float32 send some 2-decimal values the other way.
    assert off.max() > 100 * TOLERANCE and (off > TOLERANCE).sum() >= 1


def test_generated_races_through_the_feature_pipeline(races_spec) -> None:  # type: ignore[no-untyped-def]
    from gallop.features.build import build_features
    from gallop.ingest.validate import validate
    from gallop.synth.races import generate_races

    runners, _ = generate_races(1500, seed=21)
    canonical = validate(runners.astype(str), races_spec).canonical
    built = build_features(canonical, races_spec)
    frame = built.frame
    features = frame[built.plan.features].to_numpy(np.float32)  # NaN where history is missing
    relevance = np.clip(4 - frame["position"].to_numpy(), 0, None)
    groups = frame.groupby("race_id", sort=False).size().to_numpy()
    assert np.isnan(features).any(), "missing values take LightGBM's missing-value paths"
    ranker = lgb.LGBMRanker(n_estimators=150, verbose=-1).fit(features, relevance, group=groups)
    native = ranker.booster_.predict(features, raw_score=True)
    exported = onnx_scores(booster_to_onnx(ranker.booster_, features.shape[1]), features)
    assert np.abs(exported - native).max() <= TOLERANCE
    assert same_order_within_groups(exported, native, groups)


@pytest.mark.parametrize("threshold", [0.1, 0.35, -2.71, 1e-40, 3.0e38, 1e300, 57.1])
def test_float32_thresholds_decide_like_double_ones(threshold: float) -> None:
    t32 = float32_at_or_below(threshold)
    with np.errstate(over="ignore"):
        around = np.float32(
            np.float32(threshold)
            + np.array([-2, -1, 0, 1, 2], dtype=np.float32)
            * np.spacing(np.float32(min(abs(threshold), 3e38)))
        )
    for x in around:
        assert (x <= t32) == (float(x) <= threshold), (x, threshold)


def test_letor_data_path_is_beside_the_repository() -> None:
    assert Path(__file__).resolve().parents[3] / "shared" / "data" / "letor" == LETOR


def test_random_forest_boosters_average_their_trees_in_onnx_too() -> None:
    rng = np.random.default_rng(9)
    features = rng.normal(size=(2000, 5)).astype(np.float32)
    features[::9, 2] = np.nan
    labels = (features[:, 0] - np.nan_to_num(features[:, 2]) > 0).astype(int)
    booster = lgb.train(RANDOM_FOREST, lgb.Dataset(features, labels), 50)
    native = native_margin(booster, features)
    exported = onnx_scores(booster_to_onnx(booster, features.shape[1]), features)
    assert np.abs(exported - native).max() <= TOLERANCE
    # The margin is the one LightGBM's own probabilities are made of.
    assert np.allclose(1 / (1 + np.exp(-exported)), booster.predict(features), atol=1e-6)


@pytest.mark.parametrize("missing_in_training", [True, False])
def test_category_splits_are_exact_and_every_tree_node_compares_with_leq(
    missing_in_training: bool,
) -> None:
    # GIVEN a booster on a category's codes (some missing in training, or none) that
    # splits off sets of codes
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 30, 3000).astype(np.float32)
    if missing_in_training:
        codes[rng.random(3000) < 0.1] = np.nan
    number = rng.normal(size=3000).astype(np.float32)
    target = np.isin(codes, [2, 5, 11, 17, 23]) * (1 + number) + (codes == 0) * 2 + number
    features = np.column_stack([number, codes])
    params = {"objective": "regression", "min_data_per_group": 5, "cat_smooth": 1, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(features, target, categorical_feature=[1]), 60)
    splits = [
        node["threshold"]
        for tree in booster.dump_model()["tree_info"]
        for node in _splits(tree["tree_structure"])
        if node["decision_type"] == "=="
    ]
    assert any("||" in str(t) for t in splits)
    # WHEN rows with a missing, a negative and a never-seen code are scored by the graph
    # (the same 40 rows six times over: each of those codes, the data's own codes, then
    # the codes with a fraction, which LightGBM truncates: -0.5 reads as code 0)
    rows = np.tile(features[:40], (6, 1))
    rows[:40, 1], rows[40:80, 1], rows[80:120, 1] = np.nan, -1, 99
    rows[160:200, 1] = np.where(rows[160:200, 1] == 0, -0.5, rows[160:200, 1] + 0.7)
    graph = booster_to_onnx(booster, 2)
    exported = onnx_scores(graph, rows)
    # THEN they score as LightGBM scores them: the first three all the same way
    assert np.abs(exported - native_margin(booster, rows)).max() <= TOLERANCE
    assert np.allclose(exported[:40], exported[40:80]) and np.allclose(
        exported[:40], exported[80:120]
    )
    assert not np.allclose(exported[:40], exported[120:160])
    assert np.allclose(exported[120:160], exported[160:200])
    # AND the trees hold only `<=` nodes (ONNX Runtime's fast path): the sets are looked up
    (trees,) = [n for n in graph.graph.node if n.op_type == "TreeEnsemble"]
    modes = next(a.t for a in trees.attribute if a.name == "nodes_modes")
    assert set(onnx.numpy_helper.to_array(modes).tolist()) == {0}


def test_the_bases_of_one_graph_share_one_lookup_of_their_category_sets() -> None:
    from gallop.models.onnx_export import stack_to_onnx

    # GIVEN two boosters on two categories (their splits make different sets) and one
    # without any category split
    rng = np.random.default_rng(8)
    n = 4000
    first, second = rng.integers(0, 25, n), rng.integers(0, 9, n)
    number = rng.normal(size=n)
    target = np.isin(first, [1, 4, 9, 16]) + np.isin(second, [2, 3]) * number + number
    features = np.column_stack([number, first, second]).astype(np.float32)
    features[rng.random((n, 3)) < 0.05] = np.nan
    params = {"objective": "regression", "min_data_per_group": 5, "cat_smooth": 1, "verbose": -1}
    boosters = [
        lgb.train(
            {**params, "seed": seed, "num_leaves": leaves},
            lgb.Dataset(features, target, categorical_feature=categorical),
            40,
        )
        for seed, leaves, categorical in ((1, 15, [1, 2]), (2, 7, [1, 2]), (3, 7, []))
    ]
    # WHEN they are one stack's graph
    graph = stack_to_onnx(boosters, [0.5, 0.3, 0.2], 0.0, 3)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    margins = session.run(["margins"], {"features": features[:500]})[0]
    # THEN each base's margin is LightGBM's, and the codes are looked up once for all
    for i, booster in enumerate(boosters):
        assert np.abs(margins[:, i] - native_margin(booster, features[:500])).max() <= TOLERANCE
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("TreeEnsemble") == 3 and ops.count("Less") == 1
    assert len([t for t in graph.graph.initializer if t.name.endswith("_table")]) == 2


def _splits(node: dict) -> list[dict]:
    if "leaf_value" in node:
        return []
    return [node, *_splits(node["left_child"]), *_splits(node["right_child"])]


def test_the_whole_stack_is_one_graph_equal_to_the_native_stack(letor_ranker: tuple) -> None:
    from gallop.models.onnx_export import stack_to_onnx

    ranker, test, groups = letor_ranker
    train, labels, train_groups = load_letor("rank.train")
    train = np.pad(train, ((0, 0), (0, test.shape[1] - train.shape[1])))
    # GIVEN three different base models and a meta-learner's weights
    rf = lgb.train(
        RANDOM_FOREST,
        lgb.Dataset(train, (labels >= 2).astype(int)),
        40,
    )
    regression = lgb.train(
        {"objective": "regression", "verbose": -1}, lgb.Dataset(train, labels), 60
    )
    boosters = [ranker.booster_, rf, regression]
    weights, bias = [0.7, 1.3, 0.25], -0.4
    # WHEN exported as one graph THEN its margins and score equal the native computation
    model = stack_to_onnx(boosters, weights, bias, test.shape[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    score, margins = session.run(["score", "margins"], {"features": test})
    native_margins = np.column_stack([native_margin(b, test) for b in boosters])
    native_score = native_margins @ np.array(weights) + bias
    assert np.abs(margins - native_margins).max() <= TOLERANCE
    assert np.abs(score[:, 0] - native_score).max() <= 2 * TOLERANCE
    assert same_order_within_groups(score[:, 0].astype(np.float64), native_score, groups)


@pytest.mark.parametrize(
    "calibration",
    [
        {"kind": "platt"},
        {"kind": "isotonic", "thresholds": [-9.0, -0.5, 0.25, 1.0], "values": [0.1, 0.3, 0.6, 0.9]},
        {"kind": "conformal", "half_width": 0.75, "coverage": 0.9},
    ],
    ids=lambda c: c["kind"],
)
def test_linear_bases_and_each_calibration_head_equal_the_native_stack(calibration: dict) -> None:
    from gallop.models.linear import fit_linear
    from gallop.models.onnx_export import stack_to_onnx
    from gallop.models.stack import Meta

    rng = np.random.default_rng(5)
    features = (rng.normal(size=(3000, 6)) * [1, 10, 100, 1000, 0.01, 1]).astype(np.float32)
    features[rng.random(features.shape) < 0.1] = np.nan  # missing values take the mean
    y = (np.nan_to_num(features[:, 0]) + rng.normal(size=3000) > 0).astype(float)
    linear = fit_linear(features, y, "logistic")
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(features, y), 30)
    meta = Meta(np.array([0.8, 0.4]), -0.2, calibration)
    model = stack_to_onnx([linear, booster], meta.weights.tolist(), meta.bias, 6, calibration)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"features": features}), strict=True))
    margins = np.column_stack([linear.margin(features), native_margin(booster, features)])
    assert np.abs(got["margins"] - margins).max() <= TOLERANCE
    native = meta.outputs(meta.score(margins), None)
    assert set(native) == set(names) - {"score", "margins"}
    for name, values in native.items():
        assert np.abs(got[name][:, 0] - values).max() <= TOLERANCE, name
    # The linear margin splits exactly into per-feature terms and the bias.
    terms = linear.contributions(features).sum(axis=1) + linear.bias
    assert np.allclose(terms, linear.margin(features), atol=1e-12)


def test_a_linear_base_holds_each_feature_to_its_training_range_in_the_graph_too() -> None:
    from gallop.models.linear import fit_linear
    from gallop.models.onnx_export import stack_to_onnx

    # GIVEN a ridge line fitted on a count seen from 0 to 50 (and a column never seen)
    rng = np.random.default_rng(8)
    count = rng.integers(0, 51, 2000).astype(np.float32)
    features = np.column_stack([count, np.full(2000, np.nan, dtype=np.float32)])
    linear = fit_linear(features, 0.1 * count + rng.normal(size=2000), "squared")
    # WHEN it meets counts past the last it saw (as a jockey's runs grow every season)
    later = np.array([[50, np.nan], [80, 1.0], [5000, -7.0], [-3, np.nan]], dtype=np.float32)
    at_bounds = np.array([[50, np.nan], [50, 0.0], [50, 0.0], [0, np.nan]], dtype=np.float32)
    # THEN it answers as at the nearest bound, natively, in the graph and in its terms
    assert np.array_equal(linear.margin(later), linear.margin(at_bounds))
    assert linear.margin(later)[0] > linear.margin(later)[3] + 4.0  # the slope is kept within
    graph = stack_to_onnx([linear], [1.0], 0.0, 2).SerializeToString()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    exported = session.run(["margins"], {"features": later})[0][:, 0]
    assert np.abs(exported - linear.margin(later)).max() <= TOLERANCE
    terms = linear.contributions(later).sum(axis=1) + linear.bias
    assert np.allclose(terms, linear.margin(later), atol=1e-12)
