"""LightGBM boosters as ONNX tree ensembles whose outputs equal LightGBM's.

LightGBM compares a feature with a split threshold in double precision: `double(x) <= t`.
ONNX Runtime compares a float32 input with float32 thresholds, and onnxmltools' default
conversion rounds `t` to the *nearest* float32, so a value between the two goes the other
way (on the LETOR sample: 5 of 768 rows off by up to 0.039). For a float32 `x`,
`double(x) <= t` holds exactly when `x <= t32`, with `t32` the largest float32 not above
`t`: writing those thresholds makes every decision LightGBM's. Missing values follow
LightGBM's rules: with missing_type "NaN" they go the default way; with "None" LightGBM
treats them as 0.0, so they go wherever 0.0 goes. Leaf values are summed in float32 (the
difference from LightGBM's double sum is ~1e-7 per 100 trees).

A categorical split (`code in {1, 3, 5}`) is not written as a set-membership node: one
such node takes ONNX Runtime off its all-`<=` fast path, and the demo stack's session
went from 0.04 to 0.7 ms. Each distinct set instead becomes an indicator column (0 for a
member, 1 otherwise), looked up from a constant table by the code ahead of the trees,
and the split becomes `indicator <= 0.5`: the same decisions, every node `<=`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from gallop.models.linear import LinearModel

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5  # TreeEnsemble
ONNX_OPSET = 21
K_ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold


class UnsupportedModel(ValueError):
    """A LightGBM model with a construct that has no exact ONNX equivalent here."""


def float32_at_or_below(threshold: float) -> np.float32:
    """The largest float32 not above `threshold`: x32 <= result  <=>  double(x32) <= threshold."""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, stepped back below
        nearest = np.float32(threshold)
    if float(nearest) > threshold:
        nearest = np.nextafter(nearest, np.float32(-np.inf))
    return np.float32(nearest)


BRANCH_LEQ = 0  # TreeEnsemble's nodes_modes (ai.onnx.ml opset 5): x <= split


@dataclass
class _Arrays:
    """TreeEnsemble's attributes: interior nodes (nodes_*) and leaves, each in one list
    for the whole ensemble; a branch names a node's position, or a leaf's (a *_leaf flag)."""

    features: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    true_leaf: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    false_leaf: list[int] = field(default_factory=list)
    missing_true: list[int] = field(default_factory=list)
    indicators: dict[int, int] = field(default_factory=dict)  # id(categorical split): column
    roots: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    def branch(self, feature: int, mode: int, split: float, nan_goes_true: bool) -> int:
        self.features.append(feature)
        self.modes.append(mode)
        self.splits.append(split)
        self.missing_true.append(int(nan_goes_true))
        for side in (self.true_ids, self.true_leaf, self.false_ids, self.false_leaf):
            side.append(0)
        return len(self.features) - 1

    def leaf(self, value: float) -> tuple[int, int]:
        self.leaf_weights.append(float(np.float32(value)))
        return len(self.leaf_weights) - 1, 1


def _numerical(node: dict[str, Any]) -> tuple[float, bool]:
    """(float32 threshold, whether NaN goes left) of a `<=` split, as LightGBM decides."""
    threshold = float(node["threshold"])
    missing = node["missing_type"]
    if missing == "NaN":
        nan_goes_left = bool(node["default_left"])
    elif missing == "None":
        nan_goes_left = threshold >= 0.0
    else:  # "Zero": zeros (and NaN, as zero) go the default way
        nan_goes_left = bool(node["default_left"])
        if nan_goes_left != (threshold >= 0.0) or abs(threshold) <= K_ZERO_THRESHOLD:
            raise UnsupportedModel("zero_as_missing splits that disagree with the threshold")
    return float(float32_at_or_below(threshold)), nan_goes_left


def _place(arrays: _Arrays, node: dict[str, Any], scale: float) -> tuple[int, int]:
    """Adds `node` and everything below it; returns (its position, 1 if it is a leaf)."""
    if "leaf_value" in node:
        return arrays.leaf(node["leaf_value"] * scale)
    if node["decision_type"] == "==":  # members go left, as in LightGBM
        indicator = arrays.indicators[id(node)]  # 0 for a member, never NaN
        at = arrays.branch(indicator, BRANCH_LEQ, 0.5, nan_goes_true=True)
    elif node["decision_type"] == "<=":
        threshold, nan_goes_left = _numerical(node)
        at = arrays.branch(int(node["split_feature"]), BRANCH_LEQ, threshold, nan_goes_left)
    else:
        raise UnsupportedModel(f"split type {node['decision_type']!r}")
    arrays.true_ids[at], arrays.true_leaf[at] = _place(arrays, node["left_child"], scale)
    arrays.false_ids[at], arrays.false_leaf[at] = _place(arrays, node["right_child"], scale)
    return at, 0


def _add_tree(arrays: _Arrays, root: dict[str, Any], scale: float) -> None:
    if "leaf_value" in root:  # one leaf: a node whose both branches reach it
        at = arrays.branch(0, BRANCH_LEQ, 0.0, nan_goes_true=False)
        arrays.roots.append(at)
        leaf = arrays.leaf(root["leaf_value"] * scale)
        arrays.true_ids[at], arrays.true_leaf[at] = leaf
        arrays.false_ids[at], arrays.false_leaf[at] = leaf
        return
    arrays.roots.append(_place(arrays, root, scale)[0])


def _checked_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(ML_DOMAIN, ML_OPSET),
        ],
        producer_name="gallop",
    )
    onnx.checker.check_model(model)
    return model


def native_margin(booster: Any, features: np.ndarray) -> np.ndarray:
    """The model's margin as LightGBM itself uses it (or the linear model's). In
    random-forest mode LightGBM's predictions average the trees, but
    predict(raw_score=True) returns their sum."""
    if isinstance(booster, LinearModel):
        return booster.margin(features)
    raw = booster.predict(features, raw_score=True)
    if booster.dump_model().get("average_output"):
        raw = raw / booster.num_trees()
    return np.asarray(raw, dtype=np.float64)


@dataclass
class _MemberSets:
    """The distinct code sets of one feature's categorical splits, each its column's
    place: column j of `table` (one row per code, then one for every other value) is 0
    where the code is in set j."""

    feature: int
    sets: dict[tuple[int, ...], int] = field(default_factory=dict)

    def column(self, codes: tuple[int, ...]) -> int:
        return self.sets.setdefault(codes, len(self.sets))

    @property
    def codes(self) -> int:  # codes 0 .. codes-1 can be members; any other value is not
        return max(max(s) for s in self.sets) + 1

    def table(self) -> np.ndarray:
        table = np.ones((self.codes + 1, len(self.sets)), dtype=np.uint8)
        for members, j in self.sets.items():
            table[list(members), j] = 0
        return table


def _member_sets(dump: dict[str, Any]) -> tuple[list[_MemberSets], dict[int, int]]:
    """Each categorical feature's sets, and the indicator column each categorical split
    reads (id(node): column), the columns placed after the model's features, feature by
    feature in the order of the returned sets."""
    by_feature: dict[int, _MemberSets] = {}
    splits: list[tuple[int, _MemberSets, int]] = []
    stack = [tree["tree_structure"] for tree in dump["tree_info"]]
    while stack:
        node = stack.pop()
        if "leaf_value" in node:
            continue
        if node["decision_type"] == "==":
            feature = int(node["split_feature"])
            sets = by_feature.setdefault(feature, _MemberSets(feature))
            codes = tuple(sorted(int(c) for c in str(node["threshold"]).split("||")))
            splits.append((id(node), sets, sets.column(codes)))
        stack += [node["left_child"], node["right_child"]]
    ordered = sorted(by_feature.values(), key=lambda m: m.feature)
    start, first = {}, dump["max_feature_idx"] + 1
    for sets in ordered:
        start[sets.feature], first = first, first + len(sets.sets)
    return ordered, {node: start[sets.feature] + j for node, sets, j in splits}


def _indicator_parts(
    sets: list[_MemberSets], n_features: int, input_name: str, output_name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes making `output_name`: the first `n_features` inputs, then each set's
    indicator. LightGBM reads a code as int(value); NaN, a negative or an unlisted code
    is in no set, so it reads the table's last row."""
    p = output_name
    constants = [helper.make_tensor(f"{p}_width", TensorProto.INT64, [1], [n_features])]
    constants += [helper.make_tensor(f"{p}_zero", TensorProto.INT64, [1], [0])]
    constants += [helper.make_tensor(f"{p}_one", TensorProto.INT64, [1], [1])]
    constants += [helper.make_tensor(f"{p}_minus_one", TensorProto.FLOAT, [], [-1.0])]
    nodes = [
        helper.make_node(
            "Slice", [input_name, f"{p}_zero", f"{p}_width", f"{p}_one"], [f"{p}_features"]
        )
    ]
    looked_up = []
    for m in sets:
        q = f"{p}_f{m.feature}"
        table = m.table()
        constants += [
            helper.make_tensor(f"{q}_at", TensorProto.INT64, [], [m.feature]),
            helper.make_tensor(f"{q}_codes", TensorProto.FLOAT, [], [float(m.codes)]),
            helper.make_tensor(f"{q}_table", TensorProto.UINT8, table.shape, table.ravel()),
        ]
        nodes += [
            helper.make_node("Gather", [input_name, f"{q}_at"], [f"{q}_value"], axis=1),
            helper.make_node("Greater", [f"{q}_value", f"{p}_minus_one"], [f"{q}_above"]),
            helper.make_node("Less", [f"{q}_value", f"{q}_codes"], [f"{q}_below"]),
            helper.make_node("And", [f"{q}_above", f"{q}_below"], [f"{q}_known"]),
            helper.make_node("Where", [f"{q}_known", f"{q}_value", f"{q}_codes"], [f"{q}_code"]),
            helper.make_node("Cast", [f"{q}_code"], [f"{q}_row"], to=TensorProto.INT64),
            helper.make_node("Gather", [f"{q}_table", f"{q}_row"], [f"{q}_in"], axis=0),
        ]
        looked_up.append(f"{q}_in")
    nodes += [
        helper.make_node("Concat", looked_up, [f"{p}_sets"], axis=1),
        helper.make_node("Cast", [f"{p}_sets"], [f"{p}_indicators"], to=TensorProto.FLOAT),
        helper.make_node("Concat", [f"{p}_features", f"{p}_indicators"], [output_name], axis=1),
    ]
    return nodes, constants


def tree_ensemble_parts(
    dump: dict[str, Any], input_name: str, output_name: str, scale: float = 1.0
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and constants computing the raw score (times `scale`) of a LightGBM
    model dump (`Booster.dump_model()`, or several fold models' trees in one dump)."""
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise UnsupportedModel("multiclass models (several trees per iteration)")
    if dump.get("average_output"):  # random-forest mode: the score is the trees' mean
        scale /= len(dump["tree_info"])
    sets, indicators = _member_sets(dump)
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    trees_input = input_name
    if sets:
        trees_input = f"{output_name}_with_sets"
        n_features = dump["max_feature_idx"] + 1
        nodes, constants = _indicator_parts(sets, n_features, input_name, trees_input)
    arrays = _Arrays(indicators=indicators)
    for tree in dump["tree_info"]:
        _add_tree(arrays, tree["tree_structure"], scale)
    nodes.append(
        helper.make_node(
            "TreeEnsemble",
            [trees_input],
            [output_name],
            domain=ML_DOMAIN,
            n_targets=1,
            aggregate_function=1,  # SUM
            post_transform=0,  # NONE
            tree_roots=arrays.roots,
            nodes_featureids=arrays.features,
            nodes_modes=helper.make_tensor(
                "nodes_modes", TensorProto.UINT8, [len(arrays.modes)], arrays.modes
            ),
            nodes_splits=_floats("nodes_splits", arrays.splits),
            nodes_truenodeids=arrays.true_ids,
            nodes_trueleafs=arrays.true_leaf,
            nodes_falsenodeids=arrays.false_ids,
            nodes_falseleafs=arrays.false_leaf,
            nodes_missing_value_tracks_true=arrays.missing_true,
            leaf_targetids=[0] * len(arrays.leaf_weights),
            leaf_weights=_floats("leaf_weights", arrays.leaf_weights),
        )
    )
    return nodes, constants


def _floats(name: str, values: list[float]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values)


def booster_to_onnx(
    booster: Any, n_features: int, input_name: str = "features", output_name: str = "score"
) -> onnx.ModelProto:
    """A model with a float32 [n, n_features] input and the raw score [n, 1] as output."""
    nodes, constants = tree_ensemble_parts(booster.dump_model(), input_name, output_name)
    graph = helper.make_graph(
        nodes,
        "gallop_lightgbm",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1])],
        initializer=constants,
    )
    return _checked_model(graph)


def _margin_parts(
    base: Any, input_name: str, output_name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    if hasattr(base, "onnx_parts"):  # a base model of gallop.models (or a linear one)
        return base.onnx_parts(input_name, output_name)
    return tree_ensemble_parts(base.dump_model(), input_name, output_name)  # a booster


def _head(
    calibration: dict[str, Any],
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """What follows the stacked score: nodes, constants and the extra outputs' names.
    Ranking needs none in the graph (the softmax is within a race, which the caller knows)."""
    kind = calibration["kind"]
    if kind == "softmax_within_group":
        return [], [], []
    if kind == "platt":
        return [helper.make_node("Sigmoid", ["score"], ["probability"])], [], ["probability"]
    if kind == "isotonic":  # probability = values[number of thresholds the score reaches]
        thresholds, values = calibration["thresholds"][1:], calibration["values"]
        constants = [
            helper.make_tensor(
                "iso_thresholds", TensorProto.FLOAT, [1, len(thresholds)], thresholds
            ),
            helper.make_tensor("iso_values", TensorProto.FLOAT, [len(values)], values),
            helper.make_tensor("iso_axis", TensorProto.INT64, [1], [1]),
        ]
        nodes = [
            helper.make_node("GreaterOrEqual", ["score", "iso_thresholds"], ["iso_reached"]),
            helper.make_node("Cast", ["iso_reached"], ["iso_ones"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["iso_ones", "iso_axis"], ["iso_step"], keepdims=1),
            helper.make_node("Gather", ["iso_values", "iso_step"], ["probability"]),
        ]
        return nodes, constants, ["probability"]
    if kind == "conformal":
        constants = [
            helper.make_tensor("half_width", TensorProto.FLOAT, [1], [calibration["half_width"]])
        ]
        nodes = [
            helper.make_node("Identity", ["score"], ["value"]),
            helper.make_node("Sub", ["score", "half_width"], ["lower"]),
            helper.make_node("Add", ["score", "half_width"], ["upper"]),
        ]
        return nodes, constants, ["value", "lower", "upper"]
    raise ValueError(f"unknown calibration {kind!r}")


def stack_to_onnx(
    bases: list[Any],
    weights: list[float],
    bias: float,
    n_features: int,
    calibration: dict[str, Any] | None = None,
    input_name: str = "features",
) -> onnx.ModelProto:
    """One graph for the whole stack: each base model's margin (LightGBM booster or linear
    model), the meta-learner's linear combination, then the calibration. Outputs `score`
    [n, 1] = margins @ weights + bias, `margins` [n, k] (what explanations decompose) and
    the calibration's outputs: `probability` (binary), `value`, `lower`, `upper`
    (regression); a ranking's win probabilities are a softmax of `score` within each race,
    its temperature folded into the weights."""
    if len(bases) != len(weights) or not bases:
        raise ValueError("one weight per base model, at least one base model")
    nodes: list[onnx.NodeProto] = []
    constants = [
        helper.make_tensor(
            "meta_weights", TensorProto.FLOAT, [len(weights), 1], [float(w) for w in weights]
        ),
        helper.make_tensor("meta_bias", TensorProto.FLOAT, [1], [float(bias)]),
    ]
    for i, base in enumerate(bases):
        base_nodes, base_constants = _margin_parts(base, input_name, f"margin_{i}")
        nodes += base_nodes
        constants += base_constants
    nodes.append(
        helper.make_node("Concat", [f"margin_{i}" for i in range(len(bases))], ["margins"], axis=1)
    )
    nodes.append(helper.make_node("MatMul", ["margins", "meta_weights"], ["weighted"]))
    nodes.append(helper.make_node("Add", ["weighted", "meta_bias"], ["score"]))
    head_nodes, head_constants, head_outputs = _head(
        calibration or {"kind": "softmax_within_group"}
    )
    graph = helper.make_graph(
        nodes + head_nodes,
        "gallop_stack",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("margins", TensorProto.FLOAT, [None, len(bases)]),
        ]
        + [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1])
            for name in head_outputs
        ],
        initializer=constants + head_constants,
    )
    return _checked_model(graph)
