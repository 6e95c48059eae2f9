"""A boosted base's hyperparameters searched within a time budget, the same way every time.

Trials are drawn by a seeded sampler over SPACE (the first is the kind's own defaults, so
the search never chooses worse than them on its fold). Each is fitted on all but the
first of the phase's folds, stopped early on that fold, and judged there by the loss the
meta-learner is chosen by (race log loss, NDCG, log loss or squared error, after a
calibration of the margin alone).

The budget is spent by an estimate of each trial's seconds from the data's size and the
rounds it took, not by the clock: the same inputs, seed and limit give the same trials
and so the same model bytes, on a busy machine as on an idle one. The estimate was fitted
to LightGBM on one thread here; the base job's log shows the seconds a search took.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from gallop.models.catalogue import FAMILIES, Kind, label_of
from gallop.models.lightgbm import Binned, LightGBMBase, fit_booster, offset_for, params_for
from gallop.models.meta import fit_candidate, loss
from gallop.training.config import STACK_DEFAULTS
from gallop.training.rows import Rows

# name: (scale, low, high); "int" values are rounded, "log" ones drawn on a log scale.
SPACE: dict[str, tuple[str, float, float]] = {
    "learning_rate": ("log", 0.02, 0.2),
    "num_leaves": ("log int", 7, 127),
    "min_data_in_leaf": ("log int", 5, 100),
    "feature_fraction": ("linear", 0.5, 1.0),
    "lambda_l2": ("log", 1e-3, 10.0),
}
# Seconds of one boosting round: building the histograms (per row and feature) and
# finding the splits (per leaf, feature and bin), measured on one thread here.
HISTOGRAM_SECONDS = 3.5e-9
SPLIT_SECONDS = 1.5e-8
BINS = 255
# Seconds of binning one value into a LightGBM Dataset (a fit's training and validation
# rows): 0.29 s for 40,000 rows x 59 features here, as long as 17 rounds of 31 leaves.
DATASET_SECONDS = 1.2e-7
# Seconds of taking one value into a fold model's training or validation subset of the
# binned rows: 0.1 s a fold for 80,000 rows x 59 features here.
SUBSET_SECONDS = 2.2e-8
# A base job's own seconds beside its search and fits: starting Python and importing its
# libraries (2.3 s here), then reading its channels, predicting and writing its margins
# and saving its model (about 1.5 s for 100,000 rows x 59 features here).
JOB_SECONDS, JOB_VALUE_SECONDS = 2.5, 2.5e-7
FEWEST_ROUNDS = 20  # a trial that cannot take as many is not started
# A round's seconds against a regression round's, by LightGBM objective: LambdaRank's
# gradients go pair by pair within each group (25.7 ms a round against 21.3 ms on 80,000
# runners x 59 features here).
OBJECTIVE_COST = {"lambdarank": 1.2, "rank_xendcg": 1.2}


@dataclass(frozen=True)
class Trial:
    params: dict[str, Any]  # over the kind's own ({} is the kind as it is)
    loss: float
    rounds: int
    seconds: float  # estimated


def round_seconds(rows: int, features: int, leaves: int) -> float:
    return HISTOGRAM_SECONDS * rows * features + SPLIT_SECONDS * leaves * features * BINS


def round_cost(kind: Kind, task: str, settings: dict[str, Any]) -> float:
    """A round of this kind against a default LightGBM regression round on the same rows
    and leaves: its family's cost, and its objective's."""
    if kind.family != "lightgbm":
        return FAMILIES[kind.family].round_cost
    return OBJECTIVE_COST.get(str(params_for(kind, task, settings)["objective"]), 1.0)


def dataset_seconds(rows: int, features: int) -> float:
    return DATASET_SECONDS * rows * features


def job_seconds(rows: int, features: int) -> float:
    """A base job's estimated seconds beside its search and its fits."""
    return JOB_SECONDS + JOB_VALUE_SECONDS * rows * features


@dataclass(frozen=True)
class FitCost:
    """The estimate of a job's fits: seconds that do not depend on the rounds (binning,
    taking each fold's subsets), and seconds a round of every fold model."""

    fixed: float
    per_round: float

    def rounds(self, seconds: float) -> int:
        """The most rounds each fold model may take within `seconds`, never fewer than
        FEWEST_ROUNDS."""
        return max(FEWEST_ROUNDS, int((seconds - self.fixed) / self.per_round))

    def seconds(self, rounds: int) -> float:
        return self.fixed + rounds * self.per_round


def fit_cost(
    kind: Kind, settings: dict[str, Any], phases: list[int], binned: int, rows: Rows
) -> FitCost:
    """The estimate for the job's fold models: `phases`, each phase's rows (k fold models
    each, learning from (k-1)/k of them, judged on the rest); `binned`: the rows binned for
    them; `rows`: the job's training rows (their task and features)."""
    # another family's round is costed as a default LightGBM round's (31 leaves), scaled
    lightgbm = kind.family == "lightgbm"
    leaves = params_for(kind, rows.task, settings)["num_leaves"] if lightgbm else 31
    features = rows.features.shape[1]
    k = settings["folds"]
    learnt = [n * (k - 1) // k for n in phases for _ in range(k)]
    per_round = round_cost(kind, rows.task, settings) * sum(
        round_seconds(n, features, leaves) for n in learnt
    )
    subsets = SUBSET_SECONDS * k * sum(phases) * features
    return FitCost(dataset_seconds(binned, features) + subsets, per_round)


def draw(rng: np.random.Generator, fixed: set[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (scale, low, high) in SPACE.items():
        if name in fixed:
            continue
        u = rng.random()
        value = (
            np.exp(np.log(low) + u * np.log(high / low))
            if "log" in scale
            else low + u * (high - low)
        )
        params[name] = int(round(value)) if "int" in scale else round(float(value), 4)
    return params


def search(
    kind: Kind,
    settings: dict[str, Any],
    rows: Rows,
    folds: np.ndarray,
    budget: float,
) -> tuple[dict[str, Any], list[Trial]]:
    """(the best trial's params, every trial) within `budget` estimated seconds; ({}, [])
    when it cannot pay for the first trial (the kind's defaults) to take FEWEST_ROUNDS."""
    held = folds == 0
    spent = dataset_seconds(len(rows), rows.features.shape[1])
    leaves = params_for(kind, rows.task, settings)["num_leaves"]
    objective_scale = round_cost(kind, rows.task, settings)
    first = objective_scale * round_seconds(
        int(held.size - held.sum()), rows.features.shape[1], leaves
    )
    if budget - spent < first * min(FEWEST_ROUNDS, kind.rounds(settings["num_boost_round"])):
        return {}, []
    train, valid = rows.take(~held), rows.take(held)
    labels = rows.label(label_of(kind, rows.task))
    judged = valid.meta_target()
    fixed = {name for name in ("num_leaves", "min_data_in_leaf") if settings.get(name) is not None}
    rng = np.random.default_rng([settings["seed"], zlib.crc32(kind.name.encode())])
    meta_settings = {**STACK_DEFAULTS, "seed": settings["seed"]}
    offset = offset_for(kind, rows.manifest, rows.features, rows.share, rows.sizes)
    cap = kind.rounds(settings["num_boost_round"])
    # binned once for every trial; no feature left out for the leaf size a trial sets
    unfiltered = {**params_for(kind, rows.task, settings), "feature_pre_filter": False}
    binned = Binned(unfiltered, (rows.features, labels, rows.sizes), rows.categorical, offset)
    trials: list[Trial] = []
    params: dict[str, Any] = {}
    while True:
        chosen = params_for(kind, rows.task, {**settings, "lightgbm": params})
        per_round = objective_scale * round_seconds(
            len(train), rows.features.shape[1], chosen["num_leaves"]
        )
        rounds = min(cap, int((budget - spent) / per_round))
        if rounds < min(FEWEST_ROUNDS, cap) and trials:
            break
        booster = fit_booster(
            {**chosen, "feature_pre_filter": False},
            binned.rows(~held),
            binned.rows(held),
            max(rounds, 1),
            settings["early_stopping_rounds"],
        )
        margin = LightGBMBase([booster], offset).margin(valid.features)[:, None]
        single = fit_candidate("base:0", margin, judged, meta_settings)
        done = booster.current_iteration()
        # Early stopping trains `patience` rounds past the best one.
        cost = per_round * min(max(rounds, 1), done + settings["early_stopping_rounds"])
        # recorded to the millisecond below, so that the trials' sum stays within budget
        recorded = math.floor(cost * 1000) / 1000
        trials.append(Trial(params, loss(single, margin, judged), done, recorded))
        spent += cost
        params = draw(rng, fixed)
    best = min(range(len(trials)), key=lambda i: (trials[i].loss, i))
    return trials[best].params, trials
