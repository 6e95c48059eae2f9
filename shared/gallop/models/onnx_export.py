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
such node takes ONNX Runtime off its all-`<=` fast path (300 trees on one category of
300 codes, 12 rows: 0.30 ms as set membership, 0.13 ms as below, 0.09 ms without the
category). Each distinct set instead becomes an indicator column (0 for a member, 1
otherwise), looked up from a constant table by the code ahead of the trees, and the
split becomes `indicator <= 0.5`: the same decisions, every node `<=`.
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

    indicators: Indicators  # the columns categorical splits read

    features: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    true_leaf: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    false_leaf: list[int] = field(default_factory=list)
    missing_true: list[int] = field(default_factory=list)
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
        indicator = arrays.indicators.column(node)  # 0 for a member, never NaN
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
    """The distinct code sets of one feature's categorical splits, each its place among
    them: column j of `table` (one row per code, then one for every other value) is 0
    where the code is in set j."""

    feature: int
    sets: dict[tuple[int, ...], int] = field(default_factory=dict)

    @property
    def codes(self) -> int:  # codes 0 .. codes-1 can be members; any other value is not
        return max(max(s) for s in self.sets) + 1

    def table(self) -> np.ndarray:
        table = np.ones((self.codes + 1, len(self.sets)), dtype=np.uint8)
        for members, j in self.sets.items():
            table[list(members), j] = 0
        return table


class Indicators:
    """The categorical splits of every tree ensemble in one graph, as indicator columns
    of one shared input (`output`: the features, then a column per distinct set, feature
    by feature), looked up once per request for all the ensembles."""

    def __init__(self, input_name: str, n_features: int) -> None:
        self.input_name, self.n_features = input_name, n_features
        self.output = f"{input_name}_with_sets"
        self.by_feature: dict[int, _MemberSets] = {}
        self.met: dict[tuple[int, tuple[int, ...]], int] = {}

    def column(self, node: dict[str, Any]) -> int:
        """The column a categorical split (a dump's node) reads, as a stand-in (-1 - its
        place among the sets met) until `resolve` writes the real one: the columns come
        feature by feature, and a later ensemble may add a set to any feature."""
        feature = int(node["split_feature"])
        codes = tuple(sorted(int(c) for c in str(node["threshold"]).split("||")))
        sets = self.by_feature.setdefault(feature, _MemberSets(feature))
        sets.sets.setdefault(codes, len(sets.sets))
        return -1 - self.met.setdefault((feature, codes), len(self.met))

    def resolve(self, nodes: list[onnx.NodeProto]) -> None:
        """Writes the real columns into the ensembles reading `output`."""
        start, first = {}, self.n_features
        for feature in sorted(self.by_feature):
            start[feature], first = first, first + len(self.by_feature[feature].sets)
        real = [start[f] + self.by_feature[f].sets[codes] for f, codes in self.met]
        for node in nodes:
            if node.op_type == "TreeEnsemble" and node.input[0] == self.output:
                ids = next(a for a in node.attribute if a.name == "nodes_featureids").ints
                ids[:] = [real[-1 - i] if i < 0 else i for i in ids]

    def parts(self) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes making `output`; none without a categorical split. LightGBM reads a code
        as int(value); NaN, a negative or an unlisted code is in no set, so it reads the
        table's last row."""
        if not self.met:
            return [], []
        p, x = self.output, self.input_name
        features = sorted(self.by_feature)
        sets = [self.by_feature[f] for f in features]
        constants = [
            helper.make_tensor(f"{p}_width", TensorProto.INT64, [1], [self.n_features]),
            helper.make_tensor(f"{p}_zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor(f"{p}_one", TensorProto.INT64, [1], [1]),
            helper.make_tensor(f"{p}_at", TensorProto.INT64, [len(features)], features),
            helper.make_tensor(f"{p}_floor", TensorProto.FLOAT, [], [-1.0]),
            helper.make_tensor(
                f"{p}_codes", TensorProto.FLOAT, [len(sets)], [float(m.codes) for m in sets]
            ),
        ]
        nodes = [
            helper.make_node("Slice", [x, f"{p}_zero", f"{p}_width", f"{p}_one"], [f"{p}_x"]),
            helper.make_node("Gather", [x, f"{p}_at"], [f"{p}_values"], axis=1),
            helper.make_node("Greater", [f"{p}_values", f"{p}_floor"], [f"{p}_above"]),
            helper.make_node("Less", [f"{p}_values", f"{p}_codes"], [f"{p}_below"]),
            helper.make_node("And", [f"{p}_above", f"{p}_below"], [f"{p}_known"]),
            helper.make_node("Where", [f"{p}_known", f"{p}_values", f"{p}_codes"], [f"{p}_v"]),
            helper.make_node("Cast", [f"{p}_v"], [f"{p}_rows"], to=TensorProto.INT64),
        ]
        looked_up = []
        for i, m in enumerate(sets):
            q = f"{p}_f{m.feature}"
            table = m.table()
            constants += [
                helper.make_tensor(f"{q}_i", TensorProto.INT64, [], [i]),
                helper.make_tensor(f"{q}_table", TensorProto.UINT8, table.shape, table.ravel()),
            ]
            nodes += [
                helper.make_node("Gather", [f"{p}_rows", f"{q}_i"], [f"{q}_row"], axis=1),
                helper.make_node("Gather", [f"{q}_table", f"{q}_row"], [f"{q}_in"], axis=0),
            ]
            looked_up.append(f"{q}_in")
        nodes += [
            helper.make_node("Concat", looked_up, [f"{p}_looked_up"], axis=1),
            helper.make_node("Cast", [f"{p}_looked_up"], [f"{p}_sets"], to=TensorProto.FLOAT),
            helper.make_node("Concat", [f"{p}_x", f"{p}_sets"], [p], axis=1),
        ]
        return nodes, constants


def tree_ensemble_parts(
    dump: dict[str, Any],
    input_name: str,
    output_name: str,
    scale: float = 1.0,
    indicators: Indicators | None = None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and constants computing the raw score (times `scale`) of a LightGBM
    model dump (`Booster.dump_model()`, or several fold models' trees in one dump). Its
    categorical splits read `indicators`, which the caller adds to the graph ahead of
    all ensembles; without them, the lookups are this ensemble's own."""
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise UnsupportedModel("multiclass models (several trees per iteration)")
    if dump.get("average_output"):  # random-forest mode: the score is the trees' mean
        scale /= len(dump["tree_info"])
    own = indicators is None
    if indicators is None:
        indicators = Indicators(input_name, dump["max_feature_idx"] + 1)
    arrays = _Arrays(indicators=indicators)
    for tree in dump["tree_info"]:
        _add_tree(arrays, tree["tree_structure"], scale)
    nodes, constants = indicators.parts() if own else ([], [])
    trees_input = indicators.output if indicators.met else input_name
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
    if own:
        indicators.resolve(nodes)
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
    base: Any, input_name: str, output_name: str, indicators: Indicators
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    if hasattr(base, "onnx_parts"):  # a base model of gallop.models (or a linear one)
        return base.onnx_parts(input_name, output_name, indicators)
    return tree_ensemble_parts(base.dump_model(), input_name, output_name, 1.0, indicators)


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
    indicators = Indicators(input_name, n_features)
    for i, base in enumerate(bases):
        base_nodes, base_constants = _margin_parts(base, input_name, f"margin_{i}", indicators)
        nodes += base_nodes
        constants += base_constants
    lookups, lookup_constants = indicators.parts()  # ahead of every ensemble reading them
    indicators.resolve(nodes)
    nodes, constants = lookups + nodes, lookup_constants + constants
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
