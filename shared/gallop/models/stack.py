"""The meta-learners: non-negative weights on base-model margins, and the calibration.

Non-negative weights keep the stack exactly explainable (a positive mix of base models).
Ranking: a conditional logit, the chance of winning being a softmax of the stacked score
within each race (the temperature folded into the weights' scale). Binary: a logistic
stack (Platt scaling of the stacked score), isotonic as an option. Regression: a linear
stack with split-conformal intervals. Fit them on out-of-fold margins only, never on
rows they will be evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize


@dataclass(frozen=True)
class ConditionalLogit:
    weights: np.ndarray  # one per base model, >= 0; their scale is the inverse temperature
    log_loss: float  # mean negative log-likelihood of the winners on the fitting rows

    def score(self, margins: np.ndarray) -> np.ndarray:
        return margins @ self.weights


def group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def softmax_within_groups(score: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Probabilities that sum to 1 in every group (rows of a group are contiguous)."""
    starts = group_starts(sizes)
    top = np.maximum.reduceat(score, starts)
    exp = np.exp(score - np.repeat(top, sizes))
    return exp / np.repeat(np.add.reduceat(exp, starts), sizes)


def fit_conditional_logit(
    margins: np.ndarray,
    won: np.ndarray,
    sizes: np.ndarray,
    l2: float = 1e-3,
    non_negative: bool = True,
    start: np.ndarray | None = None,
) -> ConditionalLogit:
    """margins [n, k], won [n] (1 for the winner; a dead heat shares the race), sizes: the
    rows of each race, contiguous. Races with no winner carry no information and are
    left out. start: weights to start the optimiser from (a nearby fit's)."""
    margins = np.asarray(margins, dtype=np.float64)
    won = np.asarray(won, dtype=np.float64)
    winners = np.add.reduceat(won, group_starts(sizes))
    decided = winners > 0
    if not decided.any():
        raise ValueError("no race has a winner to learn from")
    # Only decided races from here on, taken once: copying every row on every one of the
    # optimiser's steps was most of a base job's time on 100,000 runners.
    used = np.repeat(decided, sizes)
    # Column-major: both products below (margins @ w, margins.T @ r) run about twice as
    # fast on it as on rows (measured on 84,000 x 59 here).
    margins, sizes = np.asfortranarray(margins[used]), np.asarray(sizes)[decided]
    target = won[used] / np.repeat(winners[decided], sizes)
    races = len(sizes)
    starts = group_starts(sizes)
    race = np.repeat(np.arange(races), sizes)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        score = margins @ w
        exp = np.exp(score - np.maximum.reduceat(score, starts)[race])
        probability = exp / np.add.reduceat(exp, starts)[race]
        nll = -float(target @ np.log(np.maximum(probability, 1e-300)))
        gradient = margins.T @ (probability - target)
        return nll / races + l2 * float(w @ w), gradient / races + 2 * l2 * w

    if start is None:
        start = np.full(margins.shape[1], 1.0 / margins.shape[1] if non_negative else 0.0)
    bounds = [(0.0 if non_negative else None, None)] * margins.shape[1]
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    weights = np.maximum(result.x, 0.0) if non_negative else result.x
    probability = softmax_within_groups(margins @ weights, sizes)
    log_loss = -float(target @ np.log(np.maximum(probability, 1e-300))) / races
    return ConditionalLogit(weights, log_loss)


@dataclass(frozen=True)
class LogisticStack:
    """Binary stack: P(y=1) = sigmoid(margins @ weights + bias). Fitted by maximum
    likelihood on out-of-fold margins, so it is the Platt calibration of the stacked score."""

    weights: np.ndarray
    bias: float

    def score(self, margins: np.ndarray) -> np.ndarray:
        return margins @ self.weights + self.bias


def sigmoid(score: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * score))  # no overflow for large |score|


def fit_logistic_stack(
    margins: np.ndarray,
    y: np.ndarray,
    l2: float = 1e-3,
    non_negative: bool = True,
    start: np.ndarray | None = None,
) -> LogisticStack:
    """Logistic regression of y on the columns (base margins, or standardised features
    for the linear base model with non_negative=False) with an unpenalised bias."""
    margins = np.asarray(margins, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([margins, np.ones(len(y))])
    penalised = np.r_[np.ones(margins.shape[1]), 0.0]  # the bias is not shrunk

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w
        nll = float(np.mean(np.logaddexp(0.0, z) - y * z))
        gradient = design.T @ (sigmoid(z) - y) / len(y)
        return nll + l2 * float((penalised * w) @ w), gradient + 2 * l2 * penalised * w

    if start is None:  # else a nearby fit's weights and bias, to start the optimiser from
        start = np.r_[
            np.full(margins.shape[1], 1.0 / margins.shape[1] if non_negative else 0.0), 0.0
        ]
    bounds = [(0.0 if non_negative else None, None)] * margins.shape[1] + [(None, None)]
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    weights = np.maximum(result.x[:-1], 0.0) if non_negative else result.x[:-1]
    return LogisticStack(weights, float(result.x[-1]))


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing step function of the score: value[i] for score >= threshold[i]
    (and value[0] below threshold[1]); fitted by pool-adjacent-violators."""

    thresholds: np.ndarray
    values: np.ndarray

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.thresholds[1:], score, side="right")]


def fit_isotonic(score: np.ndarray, y: np.ndarray) -> Isotonic:
    """The least-squares non-decreasing step function of the score. Tied scores are one
    point (their mean outcome, weighted by their count) before the fit, so the answer
    depends neither on row order nor on how ties are broken."""
    scores, inverse, counts = np.unique(
        np.asarray(score, dtype=np.float64), return_inverse=True, return_counts=True
    )
    means = np.bincount(inverse, weights=np.asarray(y, dtype=np.float64)) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x
    steps = np.r_[True, np.diff(fitted) != 0]  # one threshold where the value changes
    return Isotonic(scores[steps], fitted[steps])


@dataclass(frozen=True)
class LinearStack:
    """Regression stack: value = margins @ weights + bias, with a split-conformal interval
    value ± half_width from the out-of-fold absolute residuals."""

    weights: np.ndarray
    bias: float
    half_width: float
    coverage: float  # the nominal coverage the half-width was chosen for

    def score(self, margins: np.ndarray) -> np.ndarray:
        return margins @ self.weights + self.bias


def fit_linear_stack(
    margins: np.ndarray, y: np.ndarray, coverage: float = 0.9, l2: float = 1e-3
) -> LinearStack:
    margins = np.asarray(margins, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([margins, np.ones(len(y))])
    penalised = np.r_[np.ones(margins.shape[1]), 0.0]
    # Margins of unit spread (fit_meta scales them): a weight is in the target's units, so
    # its square is in those of the squared error, and the penalty means the same for any.

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        residual = design @ w - y
        loss = float(residual @ residual) / len(y) + l2 * float((penalised * w) @ w)
        return loss, 2 * design.T @ residual / len(y) + 2 * l2 * penalised * w

    start = np.r_[np.full(margins.shape[1], 1.0 / margins.shape[1]), float(np.mean(y))]
    bounds = [(0.0, None)] * margins.shape[1] + [(None, None)]
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    weights, bias = np.maximum(result.x[:-1], 0.0), float(result.x[-1])
    residuals = np.abs(y - (margins @ weights + bias))
    return LinearStack(weights, bias, conformal_half_width(residuals, coverage), coverage)


def conformal_half_width(residuals: np.ndarray, coverage: float) -> float:
    """Split conformal: the ceil((n + 1) * coverage)-th smallest absolute residual, so that
    a new row's interval covers its value with probability >= coverage."""
    n = len(residuals)
    rank = min(int(np.ceil((n + 1) * coverage)), n)
    return float(np.sort(residuals)[rank - 1])


@dataclass(frozen=True)
class Meta:
    """The fitted stack on top of the base margins, whatever the task: score = margins @
    weights + bias, then the calibration named in `calibration` (as the manifest and the
    ONNX graph carry it)."""

    weights: np.ndarray
    bias: float
    calibration: dict[str, Any]

    def score(self, margins: np.ndarray) -> np.ndarray:
        return np.asarray(margins, dtype=np.float64) @ self.weights + self.bias

    def outputs(self, score: np.ndarray, sizes: np.ndarray | None) -> dict[str, np.ndarray]:
        kind = self.calibration["kind"]
        if kind == "softmax_within_group":
            assert sizes is not None, "win probabilities need the races' sizes"
            return {"win_probability": softmax_within_groups(score, sizes)}
        if kind == "platt":
            return {"probability": sigmoid(score)}
        if kind == "isotonic":
            curve = Isotonic(
                np.array(self.calibration["thresholds"]), np.array(self.calibration["values"])
            )
            return {"probability": curve(score)}
        half_width = self.calibration["half_width"]
        return {"value": score, "lower": score - half_width, "upper": score + half_width}


def fit_meta(
    task: str,
    margins: np.ndarray,
    target: np.ndarray,
    sizes: np.ndarray | None = None,
    l2: float = 1e-3,
    calibration: str = "platt",
    coverage: float = 0.9,
    graded: np.ndarray | None = None,
) -> Meta:
    """target: each runner's share of its race's win (ranking), 0/1 (binary) or the value
    (regression), for out-of-fold margins; graded: for graded relevance (higher is
    better), each item's share of its group's gain 2^relevance - 1.

    The penalty is on the weights of the margins scaled to one standard deviation: a base
    whose margins are narrow (a regression on positions) needs a large weight, and
    penalising it as it stands would favour bases by the units of their margins."""
    margins = np.asarray(margins, dtype=np.float64)
    spread = margins.std(axis=0) if len(margins) else np.ones(margins.shape[1])
    spread = np.where(spread > 0, spread, 1.0)
    scaled = _fit_meta(task, margins / spread, target, sizes, l2, calibration, coverage, graded)
    return Meta(scaled.weights / spread, scaled.bias, scaled.calibration)


def _fit_meta(
    task: str,
    margins: np.ndarray,
    target: np.ndarray,
    sizes: np.ndarray | None,
    l2: float,
    calibration: str,
    coverage: float,
    graded: np.ndarray | None,
) -> Meta:
    if task == "ranking":
        assert sizes is not None, "a ranking stack needs the races' sizes"
        if graded is None:
            logit = fit_conditional_logit(margins, target, sizes, l2=l2)
            return Meta(logit.weights, 0.0, {"kind": "softmax_within_group"})
        # Graded relevance: the mix learns from every relevant item (a softmax target in
        # proportion to 2^relevance - 1), the temperature from the winners alone.
        mix = fit_conditional_logit(margins, graded, sizes, l2=l2).weights
        temperature = fit_conditional_logit((margins @ mix)[:, None], target, sizes, l2=0.0)
        return Meta(mix * temperature.weights[0], 0.0, {"kind": "softmax_within_group"})
    if task == "binary":
        stack = fit_logistic_stack(margins, target, l2=l2)
        if calibration == "platt":
            return Meta(stack.weights, stack.bias, {"kind": "platt"})
        curve = fit_isotonic(stack.score(margins), target)
        return Meta(
            stack.weights,
            stack.bias,
            {
                "kind": "isotonic",
                "thresholds": curve.thresholds.tolist(),
                "values": curve.values.tolist(),
            },
        )
    linear = fit_linear_stack(margins, target, coverage=coverage, l2=l2)
    return Meta(
        linear.weights,
        linear.bias,
        {"kind": "conformal", "half_width": linear.half_width, "coverage": coverage},
    )
