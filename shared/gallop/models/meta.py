"""Choosing the meta-learner so that the stack is never worse than its best base on the
out-of-fold margins it is chosen on.

Candidates, each ending as weights on the base margins, a bias and a calibration
(gallop.models.stack.Meta, so the graph and the explanations stay linear in the bases):
- `stack`: the non-negative mix fitted with its calibration (conditional logit, logistic
  or least squares, gallop.models.stack.fit_meta);
- `ensemble`: greedy ensemble selection with replacement (Caruana et al. 2004) over the
  bases' own calibrated scores, then calibrated once more;
- `base:<kind>`: each base alone, with its own calibration.
Each is scored by cross-validation over the groups of the out-of-fold margins (fitted
on four fifths, scored on the fifth) with the task's loss, and the best is refitted on
all of them. A single base is a candidate, so the chosen stack's cross-validated loss
is never above the best base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gallop.models.stack import Meta, fit_meta, group_starts, softmax_within_groups

ENSEMBLE_ROUNDS = 25
SELECTION_FOLDS = 5
NDCG_CUTS = (1, 3, 5, 10)


@dataclass(frozen=True)
class Target:
    """What a meta-learner is fitted to and judged on, for rows in group order."""

    task: str
    value: np.ndarray  # ranking: each row's share of its group's win; else the target
    sizes: np.ndarray | None = None
    relevance: np.ndarray | None = None  # ranking: graded relevance, for NDCG
    gain_share: np.ndarray | None = None  # relevance grades: share of the group's gain

    @property
    def graded(self) -> bool:
        return self.gain_share is not None

    def subset(self, groups: np.ndarray) -> Target:
        """The rows of the given groups (a boolean mask over groups, or rows when ungrouped)."""
        rows = np.repeat(groups, self.sizes) if self.sizes is not None else groups

        def part(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return Target(
            self.task,
            self.value[rows],
            self.sizes[groups] if self.sizes is not None else None,
            part(self.relevance),
            part(self.gain_share),
        )

    @property
    def units(self) -> int:
        return len(self.sizes) if self.sizes is not None else len(self.value)


@dataclass(frozen=True)
class Selection:
    meta: Meta
    chosen: str
    losses: dict[str, float]  # cross-validated loss of every candidate (lower is better)
    loss_name: str
    option: str  # the chosen candidate as fit_candidate names it (base:<column>)

    def refitted(self, margins: np.ndarray, target: Target, settings: dict[str, Any]) -> Selection:
        """The same candidate fitted on other rows' margins (the same bases)."""
        meta = fit_candidate(self.option, margins, target, settings)
        return Selection(meta, self.chosen, self.losses, self.loss_name, self.option)


def loss_name(target: Target) -> str:
    if target.task == "ranking":
        return "ndcg loss (1 - mean ndcg@1/3/5/10)" if target.graded else "race log loss"
    return "log loss" if target.task == "binary" else "squared error loss"


def loss(meta: Meta, margins: np.ndarray, target: Target) -> float:
    """The task's loss of a fitted meta-learner on these rows (lower is better)."""
    score = meta.score(margins)
    if target.task == "ranking":
        assert target.sizes is not None
        if target.graded:
            assert target.relevance is not None
            return 1.0 - float(
                np.mean([mean_ndcg(score, target.relevance, target.sizes, k) for k in NDCG_CUTS])
            )
        return group_log_loss(
            softmax_within_groups(score, target.sizes), target.value, target.sizes
        )
    outputs = meta.outputs(score, None)
    if target.task == "binary":
        p = np.clip(outputs["probability"], 1e-15, 1 - 1e-15)
        y = target.value
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(np.mean((outputs["value"] - target.value) ** 2))


def group_log_loss(probability: np.ndarray, share: np.ndarray, sizes: np.ndarray) -> float:
    starts = group_starts(sizes)
    decided = np.add.reduceat(share, starts) > 0
    logged = np.add.reduceat(share * np.log(np.maximum(probability, 1e-300)), starts)
    return float(-logged[decided].mean()) if decided.any() else 0.0


def mean_ndcg(score: np.ndarray, relevance: np.ndarray, sizes: np.ndarray, k: int) -> float:
    """NDCG@k with LightGBM's gain, vectorised over groups (a group with nothing relevant
    counts 1): the selection scores many candidates."""
    n, width = len(sizes), int(sizes.max())
    starts = group_starts(sizes)
    position = np.arange(len(score)) - np.repeat(starts, sizes)
    group = np.repeat(np.arange(n), sizes)
    scores = np.full((n, width), -np.inf)
    gains = np.zeros((n, width))
    scores[group, position] = score
    gains[group, position] = 2.0**relevance - 1.0
    # stable: ties in the order the rows came, as the reference implementation
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))[: order.shape[1]]
    got = (np.take_along_axis(gains, order, axis=1) * discounts).sum(axis=1)
    best = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(axis=1)
    return float(np.where(best > 0, got / np.where(best > 0, best, 1.0), 1.0).mean())


def fit_candidate(name: str, margins: np.ndarray, target: Target, settings: dict[str, Any]) -> Meta:
    if name == "stack":
        return _fit(margins, target, settings)
    if name == "ensemble":
        return fit_ensemble(margins, target, settings)
    column = int(name.split(":", 2)[1])
    single = _fit(margins[:, [column]], target, settings)
    weights = np.zeros(margins.shape[1])
    weights[column] = single.weights[0]
    return Meta(weights, single.bias, single.calibration)


def _fit(margins: np.ndarray, target: Target, settings: dict[str, Any]) -> Meta:
    return fit_meta(
        target.task,
        margins,
        target.value,
        target.sizes,
        l2=float(settings["meta_l2"]),
        calibration=settings["calibration"],
        coverage=settings["coverage"],
        graded=target.gain_share,
    )


def fit_ensemble(margins: np.ndarray, target: Target, settings: dict[str, Any]) -> Meta:
    """Greedy selection with replacement: start from nothing, add the base whose calibrated
    score most lowers the loss of the running mean, ENSEMBLE_ROUNDS times; the counts
    are the weights. Then the mix is calibrated as one score."""
    singles = [
        fit_candidate(f"base:{i}", margins, target, settings) for i in range(margins.shape[1])
    ]
    calibrated = np.column_stack([m.score(margins) for m in singles])
    counts = np.zeros(margins.shape[1])
    for _ in range(ENSEMBLE_ROUNDS):
        best, best_loss = 0, np.inf
        for i in range(margins.shape[1]):
            trial = counts.copy()
            trial[i] += 1
            mix = Meta(trial / trial.sum(), 0.0, _plain(target))
            value = loss(mix, calibrated, target)
            if value < best_loss - 1e-12:
                best, best_loss = i, value
        counts[best] += 1
    share = counts / counts.sum()
    weights = sum(s * m.weights for s, m in zip(share, singles, strict=True))
    bias = float(sum(s * m.bias for s, m in zip(share, singles, strict=True)))
    # One score, calibrated once more: a mean of calibrated scores is less sure than each.
    combined = margins @ weights + bias
    final = _fit(combined[:, None], target, settings)
    return Meta(weights * final.weights[0], bias * final.weights[0] + final.bias, final.calibration)


def _plain(target: Target) -> dict[str, Any]:
    """A calibration that passes the score through, for scoring already-calibrated mixes."""
    if target.task == "ranking":
        return {"kind": "softmax_within_group"}
    if target.task == "binary":
        return {"kind": "platt"}
    return {"kind": "conformal", "half_width": 0.0, "coverage": 0.0}


def selection_folds(target: Target, seed: int) -> np.ndarray:
    """A fold per group (or row), seeded: the meta-learners are compared out of sample."""
    units = target.units
    folds = min(SELECTION_FOLDS, units)
    return np.random.default_rng(seed).permutation(units) % folds


def candidates(n_bases: int) -> list[str]:
    return ["stack", "ensemble"] + [f"base:{i}" for i in range(n_bases)]


def select_meta(
    margins: np.ndarray, target: Target, settings: dict[str, Any], names: list[str]
) -> Selection:
    """The candidate with the lowest cross-validated loss, refitted on all rows.
    names: the bases' names, for the record (`base:<name>`)."""
    folds = selection_folds(target, int(settings.get("seed", 0)))
    units = target.sizes if target.sizes is not None else np.ones(len(target.value), dtype=int)
    row_fold = np.repeat(folds, units)
    options = candidates(margins.shape[1]) if margins.shape[1] > 1 else ["base:0"]
    losses: dict[str, float] = {}
    for option in options:
        total, weight = 0.0, 0
        for fold in range(int(folds.max()) + 1):
            fit_on, judged = folds != fold, folds == fold
            if not fit_on.any() or not judged.any():
                continue
            meta = fit_candidate(option, margins[row_fold != fold], target.subset(fit_on), settings)
            part = target.subset(judged)
            total += loss(meta, margins[row_fold == fold], part) * part.units
            weight += part.units
        losses[option] = total / weight
    chosen = min(options, key=lambda o: (losses[o], options.index(o)))
    meta = fit_candidate(chosen, margins, target, settings)
    readable = {_readable(o, names): v for o, v in losses.items()}
    return Selection(meta, _readable(chosen, names), readable, loss_name(target), chosen)


def _readable(option: str, names: list[str]) -> str:
    return f"base:{names[int(option.split(':')[1])]}" if option.startswith("base:") else option
