"""XGBoost and CatBoost models converted into the LightGBM-style dump: the ONNX graph and
the serving side's TreeSHAP decide every row as the library does, including rows exactly
at a threshold, at its float32 neighbours and with missing values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from gallop.models.catalogue import CATALOGUE, FAMILIES, Family, MissingExtra, family_class
from gallop.models.onnx_export import stack_to_onnx
from gallop.serving.treeshap import TreeExplainer
from gallop.training.config import BASE_DEFAULTS
from gallop.training.rows import Rows
from tests.unit.test_base_kinds import split_nodes

pytest.importorskip("xgboost")
pytest.importorskip("catboost")

TOLERANCE = 1e-5  # margin space, relative above 1
SETTINGS = {"learning_rate": 0.3, "seed": 0}


def data(rows: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Five columns: signal in 0, 1 (10% missing) and 4; column 3 constant."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5)).astype(np.float32)
    x[rng.random(rows) < 0.1, 1] = np.nan
    x[:, 3] = 1.0
    signal = x[:, 0] + np.nan_to_num(x[:, 1], nan=1.5) ** 2 - x[:, 4]
    return x, (signal + rng.normal(size=rows) > 1).astype(float)


def at_the_edges(dump: dict[str, Any], width: int, base: np.ndarray) -> np.ndarray:
    """For every split of the dump: a row of `base` with the split's feature exactly at the
    library's threshold, at the float32 just below and just above it, and missing."""
    out = []
    for node in split_nodes(dump):
        # the dump's threshold is at or below the library's; both neighbours of each
        threshold = np.float32(node["threshold"])
        with np.errstate(over="ignore"):  # CatBoost's NaN border (nan_mode Min) is -FLT_MAX
            below = np.nextafter(threshold, np.float32(-np.inf))
        for value in (
            threshold,
            np.nextafter(threshold, np.float32(np.inf)),
            np.nextafter(np.nextafter(threshold, np.float32(np.inf)), np.float32(np.inf)),
            below,
            np.float32(np.nan),
        ):
            row = base[len(out) % len(base)].copy()
            row[node["split_feature"]] = value
            out.append(row)
    assert out and all(len(row) == width for row in out)
    return np.array(out, dtype=np.float32)


def graph_score(bag: Any, features: np.ndarray) -> np.ndarray:
    graph = stack_to_onnx([bag], [1.0], 0.0, features.shape[1])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["score"], {"features": features})[0][:, 0].astype(np.float64)


def assert_exact(bag: Any, features: np.ndarray) -> None:
    native = bag.margin(features)
    exported = graph_score(bag, features)
    assert np.max(np.abs(exported - native) / np.maximum(1, np.abs(native))) <= TOLERANCE
    parts = TreeExplainer(bag.explanation()).contributions(features)
    np.testing.assert_allclose(parts.sum(axis=1), native, rtol=1e-6, atol=2e-6)


def fitted(family: str, task: str = "binary", seed: int = 0) -> Any:
    x, y = data(seed=seed)
    cls = family_class(family)
    train, valid = (x[:1200], y[:1200], None), (x[1200:], y[1200:], None)
    settings = {**SETTINGS, "seed": seed}
    model = cls.fit_model(CATALOGUE[family], task, settings, train, valid, 30, 5)
    return cls([model])


def test_xgboost_strict_splits_are_exact_at_every_threshold_and_its_neighbours() -> None:
    import xgboost as xgb

    # GIVEN a bag of two XGBoost boosters (two seeds) and, for each of their splits, rows
    # at the threshold XGBoost compares with `<`, at its float32 neighbours and missing
    bag = fitted("xgboost")
    bag = type(bag)([bag.models[0], fitted("xgboost", seed=1).models[0]])
    x, _ = data(seed=2)
    edges = at_the_edges(bag.dump(), 5, x)
    # WHEN the graph scores them THEN it scores as XGBoost, and TreeSHAP adds up
    assert_exact(bag, np.concatenate([edges, x]))
    # AND the explanation is XGBoost's own TreeSHAP (which works in float32)
    ours = bag.contributions(edges)
    data_matrix = xgb.DMatrix(edges, missing=np.nan)
    theirs = np.mean(
        [m.predict(data_matrix, pred_contribs=True)[:, :-1] for m in bag.models], axis=0
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_strict_threshold_is_written_as_the_float32_below_it() -> None:
    from gallop.models.xgboost import below

    # x < t and x <= below(t) agree on every float32 around t; writing t itself (what a
    # nearest-float conversion of a `<` split gives) sends x == t the wrong way
    for t in (np.float32(0.1), np.float32(-2.5), np.float32(1e-30), np.float32(3.0e38)):
        values = [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))]
        for x in values:
            assert (x < t) == (x <= np.float32(below(t)))
        assert not (t < t) and (t <= t)


def test_xgboost_intercept_is_in_the_margin_for_each_objective() -> None:
    for task in ("binary", "regression"):
        bag = fitted("xgboost", task)
        x, _ = data(seed=3)
        assert_exact(bag, x)


def test_catboost_oblivious_trees_are_exact_at_every_border_and_its_neighbours() -> None:
    # GIVEN a CatBoost bag trained with NaN in column 1 (nan_mode Min) and none in the
    # others, column 3 constant (its float feature index must still be its column), and
    # for each split rows at the border, at its float32 neighbours and missing
    bag = fitted("catboost")
    bag = type(bag)([bag.models[0], fitted("catboost", seed=1).models[0]])
    x, _ = data(seed=2)
    edges = at_the_edges(bag.dump(), 5, x)
    assert {n["split_feature"] for n in split_nodes(bag.dump())} <= {0, 1, 2, 4}
    # WHEN the graph scores them THEN it scores as CatBoost, and TreeSHAP adds up
    assert_exact(bag, np.concatenate([edges, x]))


def test_catboost_regression_scale_and_bias_are_in_the_margin() -> None:
    bag = fitted("catboost", "regression")
    x, _ = data(seed=3)
    assert_exact(bag, x)


@pytest.mark.parametrize("family", ["xgboost", "catboost"])
def test_a_saved_bag_loads_as_the_same_model(family: str, tmp_path: Path) -> None:
    bag = fitted(family)
    bag.save(tmp_path)
    again = family_class(family).load(tmp_path)
    x, _ = data(seed=4)
    np.testing.assert_array_equal(again.margin(x), bag.margin(x))
    assert again.dump() == bag.dump()


def test_a_family_whose_library_is_missing_names_its_extra(
    monkeypatch: Any, tmp_path: Path
) -> None:
    from gallop.training.bases import BaseFitError, fit_phase
    from gallop.training.runner import TrainingFailed, train_locally

    # GIVEN the xgboost family's library missing
    monkeypatch.setitem(FAMILIES, "xgboost", Family(FAMILIES["xgboost"].path, "no_such_lib"))
    # THEN loading it, fitting it and a local run with it all say which extra to install
    with pytest.raises(MissingExtra, match=r"pip install 'gallop\[no_such_lib\]'"):
        family_class("xgboost")
    with pytest.raises(BaseFitError, match=r"xgboost: .*gallop\[no_such_lib\]"):
        fit_phase(CATALOGUE["xgboost"], {**BASE_DEFAULTS, "folds": 2}, _rows(), print, "fit")
    with pytest.raises(TrainingFailed, match=r"gallop\[no_such_lib\]"):  # before any job runs
        train_locally(pd.DataFrame(), pd.DataFrame(), {"task": "binary"}, tmp_path, ("xgboost",))
    assert not any(tmp_path.iterdir())


def _rows() -> Rows:
    x, y = data(rows=100)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)]).assign(y=y)
    manifest = {
        "task": "binary",
        "features": [f"x{i}" for i in range(5)],
        "categorical": {},
        "identifiers": [],
        "group": None,
        "time": None,
        "target": "y",
        "target_order": None,
    }
    return Rows.of(frame, manifest, training=True)
