"""LightGBM's feature contributions (``pred_contrib=True``) from its JSON dump, numpy only.

Lambda serves explanations without LightGBM or SciPy, so this reimplements path-dependent
TreeSHAP (Lundberg et al. 2018, Algorithm 2). Rather than recursing through each tree per row,
every leaf is taken on its own: over the d distinct features on its path the leaf plays the game
v(S) = value * prod_{j in S} o_j * prod_{j not in S} z_j, where z_j is the product of the cover
ratios of j's splits on the path and o_j is 1 when the row passes all of them. Shapley values are
linear in the game, so a tree's TreeSHAP values are the sum of its leaves' Shapley values, and
those come from the polynomial prod_j (z_j + o_j t): Algorithm 2's EXTEND builds it, UNWIND
divides one factor out. Leaves with the same d are done together, as array operations over
(players, rows, leaves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# LightGBM's kZeroThreshold (a float literal held in a double): smaller magnitudes count as zero.
_ZERO = float(np.float32(1e-35))
_MISSING_CODES = {"None": 0, "Zero": 1, "NaN": 2}
# Rows per batch: (players, rows, leaves) temporaries of ~2 MB stay in cache; measured faster
# than larger batches, and 12 rows of a 100-tree model still fit in one.
_BATCH_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class _LeafGroup:
    """The leaves whose paths hold the same number of distinct features (players)."""

    value: np.ndarray  # [leaves]
    step_node: np.ndarray  # [leaves, steps] split index; padding steps use an always-passed split
    step_left: np.ndarray  # [leaves, steps] the direction the path takes
    step_slot: np.ndarray  # [leaves, steps] the player each step belongs to
    zero_frac: np.ndarray  # [players, leaves] z: product of the player's cover ratios
    weights: np.ndarray  # [players] k! (d - 1 - k)! / d!: Shapley weight of k other players


class TreeExplainer:
    """Exact TreeSHAP contributions of a LightGBM model from its dump, numpy only."""

    def __init__(self, dump: dict[str, Any]) -> None:
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise NotImplementedError("only one tree per iteration (no multiclass models)")
        trees = dump["tree_info"]
        self._n_features = int(dump["max_feature_idx"]) + 1
        # Random-forest mode outputs the mean of the trees (LightGBM's predict(); its raw_score
        # and pred_contrib give the sum): contributions follow the mean.
        scale = 1.0 / len(trees) if dump.get("average_output") else 1.0
        self._nodes: list[dict[str, Any]] = []
        self._leaves: list[tuple[float, list[tuple[int, bool, int, float]]]] = []
        self._expected = 0.0
        for tree in trees:
            self._walk(tree["tree_structure"], [], scale)
        self._build_splits()
        self._build_groups()

    @property
    def expected_value(self) -> float:
        return self._expected

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """[n, features + 1] float64: each feature's part of the raw score, then the expected
        value; what LightGBM's pred_contrib=True gives (divided by the trees in rf mode)."""
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise ValueError(f"expected shape (n, {self._n_features}), got {x.shape}")
        # LightGBM's Python API hands float32/float64 through and casts anything else to float32;
        # the C++ side then works in double.
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        x = x.astype(np.float64)
        # Dense rows are read as sparse ones: entries within kZeroThreshold of zero are exactly 0.
        x[np.abs(x) <= _ZERO] = 0.0
        out = np.zeros((len(x), self._n_features + 1))
        out[:, -1] = self._expected
        if not self._groups:  # only single-leaf trees
            return out
        rows = max(1, _BATCH_ELEMENTS // len(self._order))
        for start in range(0, len(x), rows):
            left = self._go_left(x[start : start + rows])
            phi = np.concatenate([self._group_shap(g, left) for g in self._groups], axis=1)
            out[start : start + rows, self._columns] = np.add.reduceat(
                phi[:, self._order], self._starts, axis=1
            )
        return out

    def _walk(self, node: dict[str, Any], path: list, scale: float) -> None:
        """Collects every leaf with its path: (split index, went left, feature, cover ratio)."""
        if "leaf_value" in node:
            if node.get("leaf_coeff"):
                raise NotImplementedError("linear trees (linear_tree=True) are not supported")
            value = float(node["leaf_value"]) * scale
            self._leaves.append((value, path))
            # LightGBM's ExpectedValue: leaves weighted by their share of the training data.
            self._expected += value * math.prod(step[3] for step in path)
            return
        if node["decision_type"] not in ("<=", "=="):
            raise NotImplementedError(f"split type {node['decision_type']!r} is not supported")
        index = len(self._nodes)
        self._nodes.append(node)
        for side, went_left in (("left_child", True), ("right_child", False)):
            child = node[side]
            count = child["leaf_count"] if "leaf_value" in child else child["internal_count"]
            # A node no training row reached (an oblivious tree's empty branch) weighs its
            # paths as nothing: the ratio is 0, where the rows' weights give none.
            parent = node["internal_count"]
            step = (index, went_left, int(node["split_feature"]), count / parent if parent else 0.0)
            self._walk(child, [*path, step], scale)

    def _build_splits(self) -> None:
        nodes = self._nodes
        self._feature = np.array([n["split_feature"] for n in nodes], dtype=np.intp)
        categorical = [n["decision_type"] == "==" for n in nodes]
        self._categorical = np.array(categorical, dtype=bool)
        self._threshold = np.array(
            [0.0 if cat else n["threshold"] for n, cat in zip(nodes, categorical, strict=True)],
            dtype=np.float64,
        )
        # A categorical split's codes as a table: members[split, code] (code < width) goes left.
        sets = [
            [int(c) for c in str(n["threshold"]).split("||")]
            for n, cat in zip(nodes, categorical, strict=True)
            if cat
        ]
        width = max((max(codes) + 1 for codes in sets), default=0)
        self._members = np.zeros((len(sets), width + 1), dtype=bool)  # last column: not listed
        for row, codes in enumerate(sets):
            self._members[row, codes] = True
        self._default_left = np.array([n["default_left"] for n in nodes], dtype=bool)
        missing = np.array([_MISSING_CODES[n["missing_type"]] for n in nodes], dtype=np.int8)
        self._zero_missing, self._nan_missing = missing == 1, missing == 2

    def _build_groups(self) -> None:
        by_width: dict[int, list[tuple[float, list]]] = {}
        for value, path in self._leaves:
            if path:  # a single-leaf tree only adds to the expected value
                by_width.setdefault(len({step[2] for step in path}), []).append((value, path))
        self._groups: list[_LeafGroup] = []
        features = []  # per group, [players * leaves] the column each Shapley value adds to
        for width, leaves in sorted(by_width.items()):
            depth = max(len(path) for _, path in leaves)
            shape = (len(leaves), depth)
            step_node = np.full(shape, len(self._nodes), dtype=np.intp)  # padding split
            step_left, step_slot = np.ones(shape, dtype=bool), np.zeros(shape, dtype=np.intp)
            zero_frac, feature = np.ones((width, len(leaves))), np.zeros((width, len(leaves)), int)
            for leaf, (_, path) in enumerate(leaves):
                slots: dict[int, int] = {}
                for p, (node, went_left, split_feature, ratio) in enumerate(path):
                    slot = slots.setdefault(split_feature, len(slots))
                    # A feature split twice on the path is one player: its cover ratios multiply.
                    zero_frac[slot, leaf] *= ratio
                    feature[slot, leaf] = split_feature
                    step_node[leaf, p], step_left[leaf, p] = node, went_left
                    step_slot[leaf, p] = slot
            factorial = [math.factorial(k) for k in range(width + 1)]
            weights = [
                factorial[k] * factorial[width - 1 - k] / factorial[width] for k in range(width)
            ]
            values = np.array([value for value, _ in leaves])
            self._groups.append(
                _LeafGroup(values, step_node, step_left, step_slot, zero_frac, np.array(weights))
            )
            features.append(feature.ravel())
        # Summing Shapley values into feature columns: sort once, one reduceat per batch of rows.
        flat = np.concatenate(features) if features else np.zeros(0, dtype=int)
        self._order = np.argsort(flat, kind="stable")
        self._columns, self._starts = np.unique(flat[self._order], return_index=True)

    def _go_left(self, x: np.ndarray) -> np.ndarray:
        """[rows, splits + 1] LightGBM's NumericalDecision; the last column is the padding split."""
        v = x[:, self._feature]
        nan = np.isnan(v)
        v = np.where(nan & ~self._nan_missing, 0.0, v)  # NaN is read as 0 unless learnt as missing
        missing = (nan & self._nan_missing) | (self._zero_missing & (np.abs(v) <= _ZERO))
        left = np.where(missing, self._default_left, v <= self._threshold)
        if len(self._members):
            left[:, self._categorical] = self._listed(x[:, self._feature[self._categorical]])
        return np.concatenate([left, np.ones((len(x), 1), dtype=bool)], axis=1)

    def _listed(self, codes: np.ndarray) -> np.ndarray:
        """[rows, categorical splits] LightGBM's CategoricalDecision: the code, truncated
        to a whole number, is listed; NaN, a negative or an unlisted code goes right."""
        width = self._members.shape[1] - 1
        whole = np.where(np.isnan(codes), -1.0, np.trunc(codes))
        index = np.where((whole >= 0) & (whole < width), whole, width).astype(np.intp)
        return self._members[np.arange(len(self._members)), index]

    @staticmethod
    def _group_shap(group: _LeafGroup, go_left: np.ndarray) -> np.ndarray:
        """[rows, players * leaves] each leaf's Shapley value for each player on its path."""
        (width, n_leaves), n_rows = group.zero_frac.shape, len(go_left)
        passed = go_left[:, group.step_node] == group.step_left
        one = np.ones((width, n_rows, n_leaves), dtype=bool)  # player axis first: contiguous
        leaves = np.arange(n_leaves)
        for p in range(group.step_node.shape[1]):
            one[group.step_slot[:, p], :, leaves] &= passed[:, :, p].T
        o, z, w = one.astype(np.float64), group.zero_frac[:, None, :], group.weights
        # EXTEND: coefficients of prod_j (z_j + o_j t), lowest power first; after j factors only
        # powers 0..j are nonzero, so only those are updated.
        poly = np.zeros((width + 1, n_rows, n_leaves))
        poly[0] = 1.0
        for j in range(width):
            poly[1 : j + 2] = poly[1 : j + 2] * z[j] + poly[: j + 1] * o[j]
            poly[0] *= z[j]
        # o_i = 0: the factor is the constant z_i; dividing it out and multiplying by the
        # marginal (o_i - z_i) = -z_i leaves -sum_k w_k P_k for every such player.
        absent = -np.tensordot(w, poly[:width], axes=1)
        # o_i = 1: UNWIND divides P by (z_i + t) from the highest power down, which stays stable
        # since z_i <= 1; the marginal is (1 - z_i). In place: this loop is the bulk of the work.
        q = np.repeat(poly[width][None], width, axis=0)
        total, term = w[width - 1] * q, np.empty_like(q)
        for k in range(width - 1, 0, -1):
            q *= -z
            q += poly[k]  # quotient coefficient k - 1: P_k - z_i * q_k
            total += np.multiply(q, w[k - 1], out=term)
        shap = np.where(one, (1.0 - z) * total, absent) * group.value
        return shap.transpose(1, 0, 2).reshape(n_rows, width * n_leaves)
