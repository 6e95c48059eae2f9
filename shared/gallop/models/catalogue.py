"""The base-model catalogue: every kind a run may train, what it learns, its family and
its defaults. Free of LightGBM and SciPy, so the API checks a run before anything trains.

A kind is a family (the class that fits, saves, exports and explains it) with settings:
adding a LightGBM variant is one entry here; adding a family is one class in its own
module (a tree family: a gallop.models.treebag.TreeBag that converts its models into the
LightGBM-style dump) plus its entries here, in FAMILIES and in CATALOGUE. A family whose
library is an optional extra is imported only when one of its kinds is fitted or loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from gallop.extras import MissingExtra

# What a kind learns from a row, for each task (gallop.models.base.labels):
#   relevance: the graded relevance (positions: 3 for the winner, 2, 1, then 0)
#   won: 1 for the group's winner (a share in a dead heat), else 0
#   position: the normalised finishing position (1 winner .. 0 last), or the grade itself
#   share: the row's share of its group's win (the conditional logit's target)
#   target: the target as it is (binary and regression tasks)
LABELS = ("relevance", "won", "position", "share", "target")


@dataclass(frozen=True)
class Family:
    """Where a family's class lives ("module:Class"), and the library it needs when that
    is an optional extra (`pip install 'gallop[<library>]'`, in the training image)."""

    path: str
    library: str | None = None
    # A boosting round's seconds against a LightGBM round on the same rows (what a time
    # limit's estimate scales by): CatBoost's depth-6 oblivious trees took 18 ms a round
    # on 64,000 rows x 8 features here, where LightGBM's estimate is 2.7 ms.
    round_cost: float = 1.0


FAMILIES: dict[str, Family] = {
    "lightgbm": Family("gallop.models.lightgbm:LightGBMBase"),
    "linear": Family("gallop.models.linear:LinearModel"),
    "xgboost": Family("gallop.models.xgboost:XGBoostBase", "xgboost", round_cost=2.0),
    "catboost": Family("gallop.models.catboost:CatBoostBase", "catboost", round_cost=7.0),
}


def missing_library(family: str) -> str | None:
    """Why a family cannot be fitted or loaded here, or None when it can."""
    library = FAMILIES[family].library
    if library is None or importlib.util.find_spec(library) is not None:
        return None
    return f"the {family} family needs {library}: pip install 'gallop[{library}]'"


def family_class(family: str) -> Any:
    """The class that fits, saves, loads, exports and explains the family's models,
    imported now (its library with it)."""
    reason = missing_library(family)
    if reason:
        raise MissingExtra(reason)
    module, name = FAMILIES[family].path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Kind:
    name: str
    family: str  # a key of FAMILIES
    tasks: tuple[str, ...]
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    # A fixed tree count per model instead of rounds stopped early: a forest does not
    # overfit by its size, so it would grow to the run's round limit (2,000 trees). The
    # run's num_boost_round still caps it.
    trees: int | None = None
    # Boosted from the market: the odds' log implied probability is the margin the trees
    # start from and add to (gallop.models.offset), where the data has odds (and its
    # log_implied feature); otherwise from zero.
    from_market: bool = False

    def rounds(self, num_boost_round: int) -> int:
        """The most trees a model of this kind takes: a forest's own count, never more
        than the run allows."""
        return min(self.trees or num_boost_round, num_boost_round)


def _lightgbm(name: str, tasks: tuple[str, ...], label: str, summary: str, **params: Any) -> Kind:
    return Kind(name, "lightgbm", tasks, label, params, summary)


RANKING, BINARY, REGRESSION = ("ranking",), ("binary",), ("regression",)
EXTRA_TREES = {"extra_trees": True}
# Few leaves, many of them: a smoother function than the default trees make.
SHALLOW = {"num_leaves": 7, "min_data_in_leaf": 40}
DEEP = {"num_leaves": 127, "min_data_in_leaf": 10, "feature_fraction": 0.7}
FOREST = {
    "boosting": "rf",
    "bagging_fraction": 0.632,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "num_leaves": 63,
    "min_data_in_leaf": 10,
}

CATALOGUE: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        _lightgbm("lambdarank", RANKING, "relevance", "LambdaRank on NDCG", objective="lambdarank"),
        _lightgbm(
            "lambdarank_et",
            RANKING,
            "relevance",
            "LambdaRank with extremely randomised splits",
            objective="lambdarank",
            **EXTRA_TREES,
        ),
        _lightgbm(
            "xendcg",
            RANKING,
            "relevance",
            "listwise cross-entropy (XE-NDCG)",
            objective="rank_xendcg",
        ),
        _lightgbm(
            "softmax",
            RANKING,
            "share",
            "boosted conditional logit: a softmax within the group, on the winner",
            objective="conditional_logit",
        ),
        Kind(
            "softmax_market",
            "lightgbm",
            RANKING,
            "share",
            # What the odds miss is a small signal: smaller, steadier trees than the default.
            {
                "objective": "conditional_logit",
                "num_leaves": 15,
                "min_data_in_leaf": 50,
                "feature_fraction": 0.8,
                "lambda_l2": 1.0,
            },
            "boosted conditional logit from the market: the trees learn what the odds miss",
            from_market=True,
        ),
        _lightgbm("binary_win", RANKING, "won", "binary: won the group", objective="binary"),
        _lightgbm(
            "position_regression",
            RANKING,
            "position",
            "regression on the normalised position (or the grade)",
            objective="regression",
        ),
        _lightgbm(
            "position_regression_et",
            RANKING,
            "position",
            "position regression with extremely randomised splits",
            objective="regression",
            **EXTRA_TREES,
        ),
        _lightgbm("binary", BINARY, "target", "gradient boosting", objective="binary"),
        _lightgbm(
            "binary_et",
            BINARY,
            "target",
            "extremely randomised splits",
            objective="binary",
            **EXTRA_TREES,
        ),
        _lightgbm(
            "binary_shallow", BINARY, "target", "many small trees", objective="binary", **SHALLOW
        ),
        _lightgbm("binary_deep", BINARY, "target", "fewer large trees", objective="binary", **DEEP),
        _lightgbm(
            "binary_goss",
            BINARY,
            "target",
            "gradient-based one-side sampling",
            objective="binary",
            data_sample_strategy="goss",
        ),
        _lightgbm("regression", REGRESSION, "target", "gradient boosting", objective="regression"),
        _lightgbm(
            "regression_et",
            REGRESSION,
            "target",
            "extremely randomised splits",
            objective="regression",
            **EXTRA_TREES,
        ),
        _lightgbm(
            "regression_shallow",
            REGRESSION,
            "target",
            "many small trees",
            objective="regression",
            **SHALLOW,
        ),
        _lightgbm(
            "regression_deep",
            REGRESSION,
            "target",
            "fewer large trees",
            objective="regression",
            **DEEP,
        ),
        _lightgbm(
            "regression_huber",
            REGRESSION,
            "target",
            "Huber loss: robust to outlying targets",
            objective="huber",
        ),
        Kind(
            "random_forest",
            "lightgbm",
            ("ranking", "binary", "regression"),
            "won",  # ranking: the chance of winning; otherwise the target
            {"objective": "by_task", **FOREST},
            "random forest (bagged deep trees, averaged)",
            trees=100,
        ),
        # Optional extras: exact as the LightGBM kinds (gallop.models.xgboost, .catboost).
        Kind(
            "xgboost",
            "xgboost",
            ("ranking", "binary", "regression"),
            "relevance",  # ranking: rank:ndcg; otherwise logistic or squared loss
            {},
            "XGBoost: depth-wise boosted trees (optional extra gallop[xgboost])",
        ),
        Kind(
            "catboost",
            "catboost",
            ("binary", "regression"),
            "target",
            # Half the trees of the run's 0.05 (each costs prediction time), no loss: on the
            # generated binary table's 10,000 rows, 484 trees in the bag, held-out AUC
            # 0.8173, against 1,027 trees and 0.8166.
            {"learning_rate": 0.1},
            "CatBoost: oblivious (symmetric) trees (optional extra gallop[catboost])",
        ),
        Kind(
            "linear",
            "linear",
            ("ranking", "binary", "regression"),
            "share",  # ranking: a conditional logit; otherwise logistic or ridge on the target
            {},
            "regularised linear model (conditional logit, logistic or ridge)",
        ),
    )
}

DEFAULT_BASES: dict[str, tuple[str, ...]] = {
    "ranking": (
        "lambdarank",
        "lambdarank_et",
        "binary_win",
        "position_regression",
        "position_regression_et",
        "linear",
        "softmax_market",  # without odds in the data: from zero, a plain conditional logit
    ),
    # catboost: the stack's held-out AUC 0.8130 -> 0.8162, log loss 0.5038 -> 0.4997 on the
    # generated binary table (10,000 rows), level on breast cancer; it needs the extra
    # gallop[catboost] (the training image has it). XGBoost gained nothing: on request.
    "binary": (
        "binary",
        "binary_et",
        "binary_shallow",
        "binary_deep",
        "random_forest",
        "linear",
        "catboost",
    ),
    "regression": (
        "regression",
        "regression_et",
        "regression_shallow",
        "regression_deep",
        "random_forest",
        "linear",
    ),
}


# A run's learning rate unless it sets one, by the rows it learns from. Every tree of every
# fold model is walked by every prediction, and more rows take more of them to stop early:
# on 5,000 generated races (42,000 rows) the stack's race log loss was 2.0581 at 0.1 and
# 2.0578 at 0.05, from 351 served trees instead of about 1,000. Small data gains from the
# slower rate: LETOR's 3,000 rows, 5-fold by query, NDCG@5/10 over LGBMRanker +0.020/+0.014
# at 0.05, +0.010/+0.010 at 0.1.
SMALL_DATA_RATE, LARGE_DATA_RATE, LARGE_DATA_ROWS = 0.05, 0.1, 10_000


def learning_rate(settings: dict[str, Any], rows: int) -> float:
    """The run's learning_rate, or by the training rows when it leaves it to gallop."""
    chosen = settings.get("learning_rate")
    if chosen is not None:
        return float(chosen)
    return LARGE_DATA_RATE if rows >= LARGE_DATA_ROWS else SMALL_DATA_RATE


def kinds_for(task: str) -> tuple[str, ...]:
    return tuple(name for name, kind in CATALOGUE.items() if task in kind.tasks)


def label_of(kind: Kind, task: str) -> str:
    """What the kind learns on this task: the catalogue's label on ranking, otherwise the
    target itself."""
    return kind.label if task == "ranking" else "target"
