"""The CatBoost family (the optional extra `gallop[catboost]`): oblivious trees converted
into the LightGBM-style dump that the export and the explanations read
(gallop.models.treebag).

The conversion is exact. An oblivious tree of depth d asks the same d questions on every
path, `x > border` (float32 x and border), and its leaf is the bit pattern of the answers,
the first split the lowest bit; it becomes a full binary tree whose `x <= border` goes
left. NaN is smaller than everything (nan_mode Min, the default), so it goes left. The
scale multiplies every leaf, the bias joins the first tree's leaves (TreeSHAP counts a
constant in the expected value), and the leaves' training weights are the counts that
TreeSHAP weighs paths by (a branch no row reached weighs nothing). CatBoost's own SHAP
values differ from path-dependent TreeSHAP over these weights (by 0.01 on 5 trees of
depth 2), so the served explanations are the dump's TreeSHAP, exact and additive. Every
column is a float feature (category codes
as numbers), so CatBoost's feature index is the column's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import catboost as cb
import numpy as np

from gallop.models.catalogue import Kind
from gallop.models.onnx_export import float32_at_or_below
from gallop.models.treebag import TreeBag, dump_of, leaf, split

FAMILY = "catboost"
LOSSES = {"binary": "Logloss", "regression": "RMSE"}
# NaN as CatBoost applies a model: "AsTrue" (nan_mode Max) answers `x > border` yes;
# "AsFalse" (Min) and "AsIs" (no NaN seen: NaN > border is false) answer no.
NAN_ANSWERS_YES = {"AsTrue": True, "AsFalse": False, "AsIs": False}
Part = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def params_for(kind: Kind, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's learning rate and seed, one thread and no files (the same inputs give
    the same bytes), then the kind's own parameters."""
    params: dict[str, Any] = {
        "loss_function": LOSSES[task],
        "learning_rate": settings["learning_rate"],
        "depth": 6,
        "random_seed": settings["seed"],
        "thread_count": 1,
        "allow_writing_files": False,
        "verbose": False,
    }
    params.update(kind.params)
    params.update(settings.get("catboost") or {})
    return params


def _pool(part: Part) -> cb.Pool:
    x, y, _ = part
    return cb.Pool(np.asarray(x, dtype=np.float32), label=y)


def fit_model(
    kind: Kind,
    task: str,
    settings: dict[str, Any],
    train: Part,
    valid: Part | None,
    rounds: int,
    patience: int,
) -> cb.CatBoost:
    """A model early-stopped on `valid` when given, shrunk to its best iteration."""
    model = cb.CatBoost({**params_for(kind, task, settings), "iterations": rounds})
    if valid is None:
        return model.fit(_pool(train))
    return model.fit(
        _pool(train), eval_set=_pool(valid), early_stopping_rounds=patience, use_best_model=True
    )


def model_json(model: cb.CatBoost) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        model.save_model(str(path), format="json")
        return json.loads(path.read_text())


def _tree(
    tree: dict[str, Any], columns: list[dict[str, Any]], scale: float, shift: float
) -> dict[str, Any]:
    splits, values, weights = tree["splits"], tree["leaf_values"], tree["leaf_weights"]
    for s in splits:
        if s["split_type"] != "FloatFeature":
            raise ValueError(f"CatBoost split type {s['split_type']!r} is not converted")

    def node(depth: int, index: int) -> dict[str, Any]:
        if depth == len(splits):
            return leaf(values[index] * scale + shift, weights[index])
        column = columns[splits[depth]["float_feature_index"]]
        border = float(float32_at_or_below(splits[depth]["border"]))
        no, yes = node(depth + 1, index), node(depth + 1, index | 1 << depth)
        nan_goes_left = not NAN_ANSWERS_YES[column["nan_value_treatment"]]
        return split(column["flat_feature_index"], border, nan_goes_left, no, yes)

    return node(0, 0)


def dump(model: cb.CatBoost) -> dict[str, Any]:
    """The model as a LightGBM-style dump that scores every float32 row as it does."""
    raw = model_json(model)
    if raw["features_info"].get("categorical_features"):
        raise ValueError("CatBoost categorical features are not converted (codes as numbers)")
    columns = raw["features_info"]["float_features"]
    scale, (bias,) = raw["scale_and_bias"]
    trees = [
        _tree(tree, columns, scale, bias if i == 0 else 0.0)
        for i, tree in enumerate(raw["oblivious_trees"])
    ]
    width = max((c["flat_feature_index"] for c in columns), default=-1) + 1
    return dump_of(trees or [leaf(bias, 1.0)], max(width, model.n_features_in_))


class CatBoostBase(TreeBag):
    """A bag of CatBoost models."""

    family = FAMILY
    suffix = ".cbm"

    @staticmethod
    def native_margin(model: cb.CatBoost, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return np.asarray(model.predict(x, prediction_type="RawFormulaVal"), dtype=np.float64)

    @staticmethod
    def native_dump(model: cb.CatBoost) -> dict[str, Any]:
        return dump(model)

    @staticmethod
    def save_model(model: cb.CatBoost, path: Path) -> None:
        model.save_model(str(path))

    @staticmethod
    def load_model(path: Path) -> cb.CatBoost:
        return cb.CatBoost().load_model(str(path))

    @staticmethod
    def tree_count(model: cb.CatBoost) -> int:
        return int(model.tree_count_)

    fit_model = staticmethod(fit_model)
