"""A bag of tree models held as ONE LightGBM-style dump (`Booster.dump_model()` format).

Every tree family is served and explained through that dump: `tree_ensemble_parts`
writes it as an ONNX TreeEnsemble and the serving side's TreeSHAP reads it, so a family
whose models convert into it exactly (XGBoost, CatBoost) needs no export or explainer of
its own. The bag's margin is the mean of its models' margins; its dump holds all their
trees with each leaf value divided by the bag's size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import onnx

    from gallop.models.onnx_export import Indicators


def merged_dump(dumps: list[dict[str, Any]]) -> dict[str, Any]:
    """One dump whose trees are all the bag's, each leaf value divided by the bag's size
    (and by its booster's tree count in random-forest mode): the mean of the boosters'
    margins as a plain sum of trees."""
    if not dumps:
        raise ValueError("a bag needs at least one booster")
    trees: list[dict[str, Any]] = []
    for dump in dumps:
        scale = 1.0 / len(dumps)
        if dump.get("average_output"):
            scale /= max(len(dump["tree_info"]), 1)
        for tree in dump["tree_info"]:
            tree = copy.deepcopy(tree)
            _scale_leaves(tree["tree_structure"], scale)
            tree["tree_index"] = len(trees)
            trees.append(tree)
    first = dumps[0]
    return {
        "name": "tree",
        "version": first.get("version"),
        "num_class": 1,
        "num_tree_per_iteration": 1,
        "max_feature_idx": first["max_feature_idx"],
        "feature_names": first.get("feature_names"),
        "average_output": False,
        "tree_info": trees,
    }


def _scale_leaves(node: dict[str, Any], scale: float) -> None:
    stack = [node]
    while stack:
        node = stack.pop()
        if "leaf_value" in node:
            node["leaf_value"] = node["leaf_value"] * scale
        else:
            stack += [node["left_child"], node["right_child"]]


def leaf(value: float, count: float) -> dict[str, Any]:
    return {"leaf_value": float(value), "leaf_count": float(count)}


def split(
    feature: int,
    threshold: float,
    nan_goes_left: bool,
    left: dict[str, Any],
    right: dict[str, Any],
    count: float | None = None,
) -> dict[str, Any]:
    """A `x <= threshold` node (NaN goes the default way); its count (TreeSHAP's cover)
    the children's unless given."""
    return {
        "split_feature": int(feature),
        "threshold": float(threshold),
        "decision_type": "<=",
        "default_left": bool(nan_goes_left),
        "missing_type": "NaN",
        "internal_count": float(_count(left) + _count(right) if count is None else count),
        "left_child": left,
        "right_child": right,
    }


def _count(node: dict[str, Any]) -> float:
    return node["leaf_count"] if "leaf_value" in node else node["internal_count"]


def dump_of(trees: list[dict[str, Any]], features: int) -> dict[str, Any]:
    """A dump of these tree structures over `features` columns."""
    return {
        "name": "tree",
        "version": "v4",
        "num_class": 1,
        "num_tree_per_iteration": 1,
        "max_feature_idx": features - 1,
        "feature_names": [f"Column_{i}" for i in range(features)],
        "average_output": False,
        "tree_info": [{"tree_index": i, "tree_structure": tree} for i, tree in enumerate(trees)],
    }


@dataclass
class TreeBag:
    """A bag of a tree library's models (the k fold models, or one refit). A family
    subclasses it with its library's margin, conversion and files."""

    models: list[Any]
    _dump: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    family: ClassVar[str] = ""
    suffix: ClassVar[str] = ".json"

    # -- what a family provides ------------------------------------------------------
    @staticmethod
    def fit_model(
        kind: Any,
        task: str,
        settings: dict[str, Any],
        train: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        valid: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
        rounds: int,
        patience: int,
    ) -> Any:
        """One model on `train` (features, labels, group sizes), early-stopped on `valid`
        when given and cut back to its best iteration."""
        raise NotImplementedError

    @staticmethod
    def native_margin(model: Any, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def native_dump(model: Any) -> dict[str, Any]:
        """The model as a LightGBM-style dump that decides and scores exactly as it does."""
        raise NotImplementedError

    @staticmethod
    def tree_count(model: Any) -> int:
        raise NotImplementedError

    @staticmethod
    def save_model(model: Any, path: Path) -> None:
        raise NotImplementedError

    @staticmethod
    def load_model(path: Path) -> Any:
        raise NotImplementedError

    # -- the bag -----------------------------------------------------------------------
    def margin(self, features: np.ndarray) -> np.ndarray:
        return np.mean([self.native_margin(m, features) for m in self.models], axis=0)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's TreeSHAP term of the margin: the serving side's exact TreeSHAP
        over the dump, in float64 (XGBoost's own works in float32, ~1e-6 off; CatBoost's
        weighs oblivious trees its own way)."""
        from gallop.serving.treeshap import TreeExplainer

        return TreeExplainer(self.dump()).contributions(features)[:, :-1]

    def dump(self) -> dict[str, Any]:
        """The bag's trees as one dump (made once; callers do not change it)."""
        if self._dump is None:
            self._dump = merged_dump([self.native_dump(m) for m in self.models])
        return self._dump

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, model in enumerate(self.models):
            self.save_model(model, folder / f"model_{i}{self.suffix}")

    @classmethod
    def load(cls, folder: Path) -> TreeBag:
        files = sorted(
            folder.glob(f"model_*{cls.suffix}"),
            key=lambda p: int(p.name[len("model_") : -len(cls.suffix)]),
        )
        if not files:
            raise FileNotFoundError(f"{folder} holds no model_<i>{cls.suffix}")
        return cls([cls.load_model(path) for path in files])

    def explanation(self) -> dict[str, Any]:
        """What the serving side explains with: TreeSHAP over the dump."""
        return {**self.dump(), "offset": None}

    def onnx_parts(
        self, input_name: str, output_name: str, indicators: Indicators | None = None
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        from gallop.models.onnx_export import tree_ensemble_parts

        return tree_ensemble_parts(self.dump(), input_name, output_name, 1.0, indicators)

    def trees(self) -> int:
        return len(self.dump()["tree_info"])

    def describe(self) -> dict[str, Any]:
        return {"models": len(self.models), "trees": [self.tree_count(m) for m in self.models]}
