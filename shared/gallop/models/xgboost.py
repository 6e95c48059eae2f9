"""The XGBoost family (the optional extra `gallop[xgboost]`): boosted trees converted into
the LightGBM-style dump that the export and the explanations read (gallop.models.treebag).

The conversion is exact. XGBoost decides `x < t` on float32 inputs with a float32 `t`;
for a float32 x that is `x <= t'`, t' the float32 just below t, and t' is the dump's
threshold. NaN goes XGBoost's `missing` way. The intercept (base_score, in margin space)
is added to the first tree's leaves: TreeSHAP counts a constant in the expected value.
Covers (the hessian sums XGBoost keeps per node) are the dump's counts, as XGBoost's own
TreeSHAP weighs them. Category codes are read as plain numbers (no native categories),
which keeps every split a `<`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from gallop.models.catalogue import Kind
from gallop.models.treebag import TreeBag, dump_of, leaf, split

FAMILY = "xgboost"
OBJECTIVES = {"binary": "binary:logistic", "regression": "reg:squarederror", "ranking": "rank:ndcg"}
Part = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def params_for(kind: Kind, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's learning rate and seed, one thread (the same inputs give the same
    bytes), then the kind's own parameters."""
    params: dict[str, Any] = {
        "objective": OBJECTIVES[task],
        "eta": settings["learning_rate"],
        "max_depth": 6,
        "tree_method": "hist",
        "nthread": 1,
        "seed": settings["seed"],
        "verbosity": 0,
    }
    params.update(kind.params)
    params.update(settings.get("xgboost") or {})
    return params


def _matrix(part: Part) -> xgb.DMatrix:
    x, y, sizes = part
    data = xgb.DMatrix(np.asarray(x, dtype=np.float32), label=y, missing=np.nan)
    if sizes is not None:
        data.set_group(sizes)
    return data


def fit_model(
    kind: Kind,
    task: str,
    settings: dict[str, Any],
    train: Part,
    valid: Part | None,
    rounds: int,
    patience: int,
) -> xgb.Booster:
    """A booster early-stopped on `valid` when given, cut back to its best iteration."""
    params = params_for(kind, task, settings)
    data = _matrix(train)
    if valid is None:
        return xgb.train(params, data, rounds)
    booster = xgb.train(
        params,
        data,
        rounds,
        evals=[(_matrix(valid), "valid")],
        early_stopping_rounds=patience,
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1]


def below(threshold: float) -> float:
    """The float32 just below a float32 `threshold`: for float32 x, x < t <=> x <= it."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def intercept(model: dict[str, Any]) -> float:
    """base_score in margin space: a probability for the logistic objectives."""
    learner = model["learner"]
    score = np.float32(json.loads(learner["learner_model_param"]["base_score"])[0])
    if learner["objective"]["name"] in ("binary:logistic", "reg:logistic"):
        return float(np.float32(-math.log(1.0 / float(score) - 1.0)))
    if learner["objective"]["name"] not in ("reg:squarederror", "rank:ndcg"):
        raise ValueError(f"no intercept rule for objective {learner['objective']['name']!r}")
    return float(score)


def _tree(tree: dict[str, Any], shift: float) -> dict[str, Any]:
    if any(tree["split_type"]):
        raise ValueError("categorical splits are not converted (codes are read as numbers)")
    left, right = tree["left_children"], tree["right_children"]
    value, cover = tree["split_conditions"], tree["sum_hessian"]
    feature, default_left = tree["split_indices"], tree["default_left"]

    def node(i: int) -> dict[str, Any]:
        if left[i] == -1:
            return leaf(float(np.float32(value[i]) + shift), cover[i])
        # XGBoost's own cover, as its TreeSHAP weighs it
        children = node(left[i]), node(right[i])
        return split(feature[i], below(value[i]), bool(default_left[i]), *children, cover[i])

    return node(0)


def dump(booster: xgb.Booster) -> dict[str, Any]:
    """The booster as a LightGBM-style dump that scores every float32 row as it does."""
    model = json.loads(booster.save_raw("json"))
    trees = model["learner"]["gradient_booster"]["model"]["trees"]
    shift = intercept(model)
    converted = [_tree(tree, shift if i == 0 else 0.0) for i, tree in enumerate(trees)]
    if not converted:
        converted = [leaf(shift, 1.0)]
    return dump_of(converted, booster.num_features())


class XGBoostBase(TreeBag):
    """A bag of XGBoost boosters."""

    family = FAMILY
    suffix = ".ubj"

    @staticmethod
    def native_margin(model: xgb.Booster, features: np.ndarray) -> np.ndarray:
        data = xgb.DMatrix(np.asarray(features, dtype=np.float32), missing=np.nan)
        return model.predict(data, output_margin=True).astype(np.float64)

    @staticmethod
    def native_dump(model: xgb.Booster) -> dict[str, Any]:
        return dump(model)

    @staticmethod
    def save_model(model: xgb.Booster, path: Path) -> None:
        model.save_model(str(path))

    @staticmethod
    def load_model(path: Path) -> xgb.Booster:
        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(str(path))
        return booster

    @staticmethod
    def tree_count(model: xgb.Booster) -> int:
        return model.num_boosted_rounds()

    fit_model = staticmethod(fit_model)
