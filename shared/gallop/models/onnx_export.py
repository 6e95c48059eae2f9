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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from gallop.models.linear import LinearModel

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3
ONNX_OPSET = 15
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


@dataclass
class _Arrays:
    tree_ids: list[int] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    feature_ids: list[int] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    missing_true: list[int] = field(default_factory=list)
    leaf_tree: list[int] = field(default_factory=list)
    leaf_node: list[int] = field(default_factory=list)
    leaf_value: list[float] = field(default_factory=list)


def _add_tree(arrays: _Arrays, tree_id: int, root: dict[str, Any], scale: float) -> None:
    next_id = 0
    stack: list[tuple[dict[str, Any], int]] = [(root, 0)]
    while stack:
        node, node_id = stack.pop()
        arrays.tree_ids.append(tree_id)
        arrays.node_ids.append(node_id)
        if "leaf_value" in node:
            arrays.feature_ids.append(0)
            arrays.modes.append("LEAF")
            arrays.values.append(0.0)
            arrays.true_ids.append(0)
            arrays.false_ids.append(0)
            arrays.missing_true.append(0)
            arrays.leaf_tree.append(tree_id)
            arrays.leaf_node.append(node_id)
            arrays.leaf_value.append(float(np.float32(node["leaf_value"] * scale)))
            continue
        if node["decision_type"] != "<=":
            raise UnsupportedModel(f"split type {node['decision_type']!r} (categorical splits)")
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
        left, right = next_id + 1, next_id + 2
        next_id += 2
        arrays.feature_ids.append(int(node["split_feature"]))
        arrays.modes.append("BRANCH_LEQ")
        arrays.values.append(float(float32_at_or_below(threshold)))
        arrays.true_ids.append(left)
        arrays.false_ids.append(right)
        arrays.missing_true.append(int(nan_goes_left))
        stack.append((node["right_child"], right))
        stack.append((node["left_child"], left))


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


def tree_ensemble_node(
    dump: dict[str, Any], input_name: str, output_name: str, scale: float = 1.0
) -> onnx.NodeProto:
    """One TreeEnsembleRegressor computing the raw score (times `scale`) of a LightGBM
    model dump (`Booster.dump_model()`, or several fold models' trees in one dump)."""
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise UnsupportedModel("multiclass models (several trees per iteration)")
    if dump.get("average_output"):  # random-forest mode: the score is the trees' mean
        scale /= len(dump["tree_info"])
    arrays = _Arrays()
    for tree in dump["tree_info"]:
        _add_tree(arrays, int(tree["tree_index"]), tree["tree_structure"], scale)
    return helper.make_node(
        "TreeEnsembleRegressor",
        [input_name],
        [output_name],
        domain=ML_DOMAIN,
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[0.0],
        nodes_treeids=arrays.tree_ids,
        nodes_nodeids=arrays.node_ids,
        nodes_featureids=arrays.feature_ids,
        nodes_modes=arrays.modes,
        nodes_values=arrays.values,
        nodes_truenodeids=arrays.true_ids,
        nodes_falsenodeids=arrays.false_ids,
        nodes_missing_value_tracks_true=arrays.missing_true,
        target_treeids=arrays.leaf_tree,
        target_nodeids=arrays.leaf_node,
        target_ids=[0] * len(arrays.leaf_node),
        target_weights=arrays.leaf_value,
    )


def booster_to_onnx(
    booster: Any, n_features: int, input_name: str = "features", output_name: str = "score"
) -> onnx.ModelProto:
    """A model with a float32 [n, n_features] input and the raw score [n, 1] as output."""
    node = tree_ensemble_node(booster.dump_model(), input_name, output_name)
    graph = helper.make_graph(
        [node],
        "gallop_lightgbm",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1])],
    )
    return _checked_model(graph)


def _margin_parts(
    base: Any, input_name: str, output_name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    if hasattr(base, "onnx_parts"):  # a base model of gallop.models (or a linear one)
        return base.onnx_parts(input_name, output_name)
    return [tree_ensemble_node(base.dump_model(), input_name, output_name)], []  # a booster


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
