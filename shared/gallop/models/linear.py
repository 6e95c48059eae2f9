"""The regularised linear base model: standardised features, missing values at the mean,
each feature held to the range it had in training.

Ridge regression for regression targets, L2-regularised logistic regression for binary
ones, and for races an L2-regularised conditional logit (a softmax within each race: the
classic handicapping model). Its margin is a sum of one term per
feature, so its explanation is exact, and it exports to a few ONNX operators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx
# Fitting needs SciPy and exporting needs onnx; the serving side only reads the model,
# so those are imported where they are used.


FAMILY = "linear"
FILE = "linear.json"
ARRAYS = ("means", "scales", "coef", "low", "high")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class LinearModel:
    means: np.ndarray  # what a missing value becomes, and the centre
    scales: np.ndarray  # standard deviations (1 for a constant feature)
    coef: np.ndarray  # per standardised feature
    bias: float
    # The training rows' range of each feature. A line goes on rising past the last value
    # it saw; counts that grow with time (a jockey's runs) would do so on every new race.
    low: np.ndarray
    high: np.ndarray

    family = FAMILY

    def standardised(self, features: np.ndarray) -> np.ndarray:
        values = np.asarray(features, dtype=np.float64)
        values = np.clip(np.where(np.isnan(values), self.means, values), self.low, self.high)
        return (values - self.means) / self.scales

    def margin(self, features: np.ndarray) -> np.ndarray:
        return self.standardised(features) @ self.coef + self.bias

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's term of the margin (the rest is the bias): exact, additive."""
        return self.standardised(features) * self.coef

    def explanation(self) -> dict[str, Any]:
        """What the serving side explains with: the model itself (its terms are exact)."""
        fields = {name: getattr(self, name) for name in ARRAYS}
        payload = {name: [float(v) for v in values] for name, values in fields.items()}
        return {**payload, "bias": self.bias}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FILE).write_text(json.dumps(self.explanation(), sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> LinearModel:
        return cls.from_dict(json.loads((folder / FILE).read_text()))

    def describe(self) -> dict[str, Any]:
        return {"nonzero_coefficients": int(np.count_nonzero(self.coef))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearModel:
        arrays = {name: np.array(data[name], dtype=np.float64) for name in ARRAYS}
        return cls(**arrays, bias=float(data["bias"]))

    def onnx_parts(
        self, input_name: str, output_name: str, indicators: Any = None
    ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes computing the margin [n, 1] from the float32 input, and their constants
        (a linear model has no categorical splits: `indicators` is for trees)."""
        from onnx import TensorProto, helper

        p = output_name
        d = len(self.means)
        constants = [
            helper.make_tensor(f"{p}_means", TensorProto.FLOAT, [1, d], self.means.tolist()),
            helper.make_tensor(
                f"{p}_coef", TensorProto.FLOAT, [d, 1], (self.coef / self.scales).tolist()
            ),
            helper.make_tensor(f"{p}_bias", TensorProto.FLOAT, [1], [self.bias]),
            helper.make_tensor(f"{p}_low", TensorProto.FLOAT, [1, d], self.low.tolist()),
            helper.make_tensor(f"{p}_high", TensorProto.FLOAT, [1, d], self.high.tolist()),
        ]
        nodes = [
            helper.make_node("IsNaN", [input_name], [f"{p}_missing"]),
            helper.make_node("Where", [f"{p}_missing", f"{p}_means", input_name], [f"{p}_filled"]),
            helper.make_node("Max", [f"{p}_filled", f"{p}_low"], [f"{p}_above"]),
            helper.make_node("Min", [f"{p}_above", f"{p}_high"], [f"{p}_held"]),
            # Centre before the product: the terms stay small, so float32 loses little.
            helper.make_node("Sub", [f"{p}_held", f"{p}_means"], [f"{p}_centred"]),
            helper.make_node("MatMul", [f"{p}_centred", f"{p}_coef"], [f"{p}_product"]),
            helper.make_node("Add", [f"{p}_product", f"{p}_bias"], [output_name]),
        ]
        return nodes, constants


def fit_linear(
    features: np.ndarray,
    labels: np.ndarray,
    loss: str,
    l2: float = 1e-2,
    sizes: np.ndarray | None = None,
    categorical: list[int] | None = None,
    near: LinearModel | None = None,
) -> LinearModel:
    """Minimises the mean loss ("squared", "logistic", or "conditional_logit" with labels
    a runner's share of its race's win and `sizes` the races' contiguous rows) + l2 *
    |coef|^2 on standardised features; the bias is not penalised. Categorical columns
    (codes, not quantities) are left out: their coefficient is 0. near: a fit on much the
    same rows (all of them, for a fold's), whose solution the optimiser starts from."""
    from gallop.models.stack import fit_conditional_logit, fit_logistic_stack

    values = np.asarray(features, dtype=np.float64).copy()
    if categorical:
        values[:, categorical] = 0.0  # constant: standardised to 0, so no term
    means = np.nanmean(values, axis=0)
    means = np.where(np.isnan(means), 0.0, means)  # a column with no values at all
    # The centre as float32 holds it, as the ONNX graph does: for a feature with a large
    # mean and a small spread (a year), its rounding times coef/scale would break parity.
    means = means.astype(np.float32).astype(np.float64)
    scales = np.nanstd(values, axis=0)
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
    # The bounds are float32 values, so the graph holds them exactly. No values: no bounds.
    seen = ~np.isnan(values).all(axis=0)
    low, high = np.full(values.shape[1], -FLOAT32_MAX), np.full(values.shape[1], FLOAT32_MAX)
    low[seen], high[seen] = np.nanmin(values[:, seen], axis=0), np.nanmax(values[:, seen], axis=0)
    empty = LinearModel(means, scales, np.zeros(values.shape[1]), 0.0, low, high)
    z = empty.standardised(values)
    y = np.asarray(labels, dtype=np.float64)
    n, d = z.shape
    if loss == "conditional_logit":
        assert sizes is not None, "a conditional logit needs the races' sizes"
        start = None if near is None else near.coef * scales / near.scales
        logit = fit_conditional_logit(z, y, sizes, l2=l2, non_negative=False, start=start)
        return LinearModel(means, scales, logit.weights, 0.0, low, high)
    if loss == "squared":
        bias = float(y.mean())
        coef = np.linalg.solve(z.T @ z / n + l2 * np.eye(d), z.T @ (y - bias) / n)
        return LinearModel(means, scales, coef, bias, low, high)

    start = None
    if near is not None:  # its terms in this fit's standardised features
        coef = near.coef * scales / near.scales
        start = np.r_[coef, near.bias + float(coef @ ((means - near.means) / scales))]
    logistic = fit_logistic_stack(z, y, l2=l2, non_negative=False, start=start)
    return LinearModel(means, scales, logistic.weights, logistic.bias, low, high)
