"""The meta-learner: non-negative weights on base-model margins, fitted as a conditional
logit (the chance of winning is a softmax of the stacked score within each race).

Non-negative weights keep the stack exactly explainable (a positive mix of base models),
and the softmax's temperature is folded into the weights' scale. Fit it on out-of-fold
margins only, never on rows it will be evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


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
    margins: np.ndarray, won: np.ndarray, sizes: np.ndarray, l2: float = 1e-3
) -> ConditionalLogit:
    """margins [n, k], won [n] (1 for the winner; a dead heat shares the race), sizes: the
    rows of each race, contiguous. Races with no winner carry no information and are
    left out."""
    margins = np.asarray(margins, dtype=np.float64)
    won = np.asarray(won, dtype=np.float64)
    starts = group_starts(sizes)
    winners = np.add.reduceat(won, starts)
    target = won / np.repeat(np.where(winners > 0, winners, 1.0), sizes)
    used = np.repeat(winners > 0, sizes)
    if not used.any():
        raise ValueError("no race has a winner to learn from")
    races = int((winners > 0).sum())

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        probability = softmax_within_groups(margins @ w, sizes)
        nll = -float((target[used] * np.log(np.maximum(probability[used], 1e-300))).sum())
        gradient = ((probability - target)[used, None] * margins[used]).sum(axis=0)
        return nll / races + l2 * float(w @ w), gradient / races + 2 * l2 * w

    start = np.full(margins.shape[1], 1.0 / margins.shape[1])
    result = minimize(
        objective, start, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * margins.shape[1]
    )
    weights = np.maximum(result.x, 0.0)
    probability = softmax_within_groups(margins @ weights, sizes)
    log_loss = -float((target[used] * np.log(np.maximum(probability[used], 1e-300))).sum()) / races
    return ConditionalLogit(weights, log_loss)
