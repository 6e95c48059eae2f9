"""Fitting one base model the way the stack needs it, whatever its family.

Two phases, each k-fold by group (a race never straddles two folds), each fold model
early-stopped on its own held-out fold:
- evaluation: fitted on the training rows only; its out-of-fold margins teach the
  meta-learner, its margins on the held-out rows judge the stack (nothing of them seen);
- final: fitted on every row (training and held-out): its out-of-fold margins fit the
  served meta-learner, and its model is the one registered.
The served model is the bag of the k fold models (their margins averaged), or with
`bagging: false` one model refit on all rows for the folds' mean best iteration.
Without held-out rows the two phases are one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gallop.models.catalogue import (
    CATALOGUE,
    Kind,
    MissingExtra,
    family_class,
    label_of,
    learning_rate,
)
from gallop.models.lightgbm import Binned, LightGBMBase, fit_booster, offset_for, params_for
from gallop.models.linear import LinearModel, fit_linear
from gallop.models.treebag import TreeBag
from gallop.training.rows import Rows
from gallop.training.search import FEWEST_ROUNDS, FitCost, fit_cost, job_seconds, search

BaseModel = LightGBMBase | LinearModel | TreeBag
LINEAR_LOSS = {"ranking": "conditional_logit", "binary": "logistic", "regression": "squared"}
# A refit on all rows sees 1/(k-1) more data than a fold model: a few more rounds.
REFIT_ROUNDS = 1.1


class BaseFitError(ValueError):
    """Data a base model cannot be fitted on (too few groups for the folds ...), or a
    kind whose library is not installed."""


@dataclass
class Phase:
    oof: np.ndarray  # out-of-fold margins on the rows it was fitted on
    model: BaseModel
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    iterations: list[int] = field(default_factory=list)  # per fold (boosted kinds)
    seconds: float = 0.0


@dataclass
class BaseFit:
    kind: Kind
    model: BaseModel  # the served model, fitted on every row
    eval_oof: np.ndarray  # out-of-fold margins on the training rows
    eval_test: np.ndarray | None  # the training rows' model's margins on the held-out rows
    final_oof: np.ndarray  # out-of-fold margins on every row
    trace: dict[str, Any]
    eval_folds: np.ndarray  # each training row's fold
    final_folds: np.ndarray


def fit_base(
    kind_name: str,
    settings: dict[str, Any],
    train: Rows,
    test: Rows | None,
    everything: Rows | None,
    progress: Callable[[str], None] = print,
) -> BaseFit:
    """`everything`: the training and held-out rows together (None without a held-out
    part, when the evaluation phase is the final one)."""
    kind = CATALOGUE[kind_name]
    # one rate for both phases: the training rows'
    settings = {**settings, "learning_rate": learning_rate(settings, len(train))}
    searched = None
    if kind.family == "lightgbm" and settings.get("search_seconds"):
        budget = search_budget(kind, settings, train, everything)
        folds = assign_folds(train, settings["folds"], settings["split"], settings["seed"])
        # Each trial is judged at the rounds the fits will be allowed: a slow learning rate
        # that wins at 300 rounds loses when the limit lets the fold models take 20.
        trial_settings = {
            **settings,
            "num_boost_round": fit_round_cap(kind, settings, train, everything),
        }
        params, trials = search(kind, trial_settings, train, folds, budget)
        if trials:
            said = f"{len(trials)} trials, chose {params or 'the defaults'}"
        else:
            said = "skipped: the time limit leaves it no time beside the fits"
        progress(f"{kind.name} search: {said}")
        settings = {**settings, "lightgbm": {**(settings.get("lightgbm") or {}), **params}}
        searched = {
            "budget_seconds": round(budget, 3),
            "estimated_seconds": round(sum(t.seconds for t in trials), 3),
            "chosen": params,
            "trials": [asdict(t) for t in trials],
        }
    if kind.family != "linear" and settings.get("fit_seconds"):
        settings = within_fit_budget(kind, settings, train, everything, progress)
    first = fit_phase(kind, settings, train, progress, "evaluation")
    eval_test = first.model.margin(test.features) if test is not None else None
    final = (
        first if everything is None else fit_phase(kind, settings, everything, progress, "final")
    )
    trace = {
        "evaluation": {"iterations": first.iterations, "seconds": round(first.seconds, 2)},
        "final": {"iterations": final.iterations, "seconds": round(final.seconds, 2)},
        "model": final.model.describe(),
        "left_out_groups": (everything or train).left_out_groups,
        "search": searched,
    }
    return BaseFit(
        kind, final.model, first.oof, eval_test, final.oof, trace, first.folds, final.folds
    )


def within_fit_budget(
    kind: Kind,
    settings: dict[str, Any],
    train: Rows,
    everything: Rows | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The settings with num_boost_round cut so that every fold model of both phases fits
    in the job's fit_seconds (a run with a time_limit), by the same estimate the search
    spends its budget by: the same inputs give the same rounds, on any machine's load."""
    rounds = fit_round_cap(kind, settings, train, everything)
    if rounds >= settings["num_boost_round"]:
        return settings
    progress(f"{kind.name}: at most {rounds} rounds a fold model, to keep to the time limit")
    return {**settings, "num_boost_round": rounds}


def fit_round_cap(
    kind: Kind, settings: dict[str, Any], train: Rows, everything: Rows | None
) -> int:
    """The most rounds a fold model may take: the run's, or fewer under a time limit."""
    if not settings.get("fit_seconds"):
        return int(settings["num_boost_round"])
    planned = planned_fits(kind, settings, train, everything).rounds(settings["fit_seconds"])
    return min(int(settings["num_boost_round"]), planned)


def planned_fits(
    kind: Kind, settings: dict[str, Any], train: Rows, everything: Rows | None
) -> FitCost:
    """The estimate of the job's fold models: both phases, k each."""
    phases = [len(train)] if everything is None else [len(train), len(everything)]
    # LightGBM bins each phase's rows once; the other families each fit's
    binned = sum(phases) * (1 if kind.family == "lightgbm" else settings["folds"])
    return fit_cost(kind, settings, phases, binned, train)


def search_budget(
    kind: Kind, settings: dict[str, Any], train: Rows, everything: Rows | None
) -> float:
    """The job's search_seconds less what its limit must also pay for beside the search:
    the job's own work, and what its fits cost beyond fit_seconds when even their fewest
    rounds do not fit in it (large data under a short limit)."""
    rows = len(everything or train)
    overhead = job_seconds(rows, train.features.shape[1])
    fewest = planned_fits(kind, settings, train, everything).seconds(FEWEST_ROUNDS)
    beyond = max(0.0, fewest - settings.get("fit_seconds", fewest))
    return max(0.0, settings["search_seconds"] - overhead - beyond)


def assign_folds(rows: Rows, folds: int, split: str, seed: int) -> np.ndarray:
    """Each row's fold, whole groups together: a seeded shuffle of the groups, or with
    split=time contiguous blocks of groups in time order."""
    groups = int(rows.group_index.max()) + 1 if len(rows) else 0
    if groups < folds:
        raise BaseFitError(f"{groups} groups cannot make {folds} folds")
    time_column = rows.manifest.get("time")
    if split == "time" and time_column:
        first = (
            rows.frame.groupby(rows.group_index)[time_column]
            .min()
            .reindex(range(groups))
            .to_numpy()
        )
        order = np.argsort(first, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(groups)
    fold_of_group = np.empty(groups, dtype=np.int64)
    fold_of_group[order] = np.arange(groups) * folds // groups
    return fold_of_group[rows.group_index]


def fit_phase(
    kind: Kind, settings: dict[str, Any], rows: Rows, progress: Callable[[str], None], name: str
) -> Phase:
    started = time.monotonic()
    settings = {**settings, "learning_rate": learning_rate(settings, len(rows))}
    folds = assign_folds(rows, settings["folds"], settings["split"], settings["seed"])
    labels = rows.label(label_of(kind, rows.task))
    if kind.family == "linear":
        phase = _linear_phase(rows, labels, folds, settings)
    else:
        phase = _boosted_phase(kind, settings, rows, labels, folds, progress, name)
    phase.seconds = time.monotonic() - started
    phase.folds = folds
    return phase


def _part(rows: Rows, labels: np.ndarray, mask: np.ndarray, fold_of_group: np.ndarray | None):
    sizes = None
    if rows.sizes is not None and fold_of_group is not None:
        sizes = rows.sizes[fold_of_group]
    return rows.features[mask], labels[mask], sizes


def _group_folds(rows: Rows, folds: np.ndarray) -> np.ndarray:
    """The fold of each group, in group order."""
    starts = np.flatnonzero(np.r_[True, rows.group_index[1:] != rows.group_index[:-1]])
    return folds[starts]


def _boosted_phase(
    kind: Kind,
    settings: dict[str, Any],
    rows: Rows,
    labels: np.ndarray,
    folds: np.ndarray,
    progress: Callable[[str], None],
    name: str,
) -> Phase:
    rounds = kind.rounds(settings["num_boost_round"])
    patience = settings["early_stopping_rounds"]
    fit, bag, count = _trainer(kind, settings, rows, labels, patience)
    by_group = _group_folds(rows, folds)
    oof = np.empty(len(rows))
    models, iterations = [], []
    for fold in range(settings["folds"]):
        held = folds == fold
        model = fit((~held, by_group != fold), (held, by_group == fold), rounds)
        oof[held] = bag([model]).margin(rows.features[held])
        models.append(model)
        iterations.append(count(model))
        progress(f"{kind.name} {name} fold {fold + 1}/{settings['folds']}: {iterations[-1]} rounds")
    if settings["bagging"]:
        return Phase(oof, bag(models), iterations=iterations)
    refit_rounds = rounds if kind.trees else max(1, round(np.mean(iterations) * REFIT_ROUNDS))
    everything = (np.ones(len(rows), dtype=bool), np.ones_like(by_group, bool))
    return Phase(oof, bag([fit(everything, None, refit_rounds)]), iterations=iterations)


Masks = tuple[np.ndarray, np.ndarray]  # rows, and their groups (in group order)


def _trainer(
    kind: Kind, settings: dict[str, Any], rows: Rows, labels: np.ndarray, patience: int
) -> tuple[Callable[..., Any], Callable[[list[Any]], BaseModel], Callable[[Any], int]]:
    """(fit one model on (train, valid or None, rounds), each given as Masks; the bag of
    fitted models; a model's rounds) for a boosted kind's family."""
    if kind.family == "lightgbm":
        params = params_for(kind, rows.task, settings)
        offset = offset_for(kind, rows.manifest, rows.features, rows.share, rows.sizes)
        binned = Binned(params, (rows.features, labels, rows.sizes), rows.categorical, offset)

        def fit_lightgbm(train: Masks, valid: Masks | None, rounds: int) -> Any:
            subset = binned.rows(valid[0]) if valid is not None else None
            return fit_booster(params, binned.rows(train[0]), subset, rounds, patience)

        return (
            fit_lightgbm,
            lambda boosters: LightGBMBase(boosters, offset),
            lambda booster: booster.current_iteration(),
        )
    try:
        family = family_class(kind.family)
    except MissingExtra as exc:
        raise BaseFitError(f"{kind.name}: {exc}") from None

    def fit_family(train: Masks, valid: Masks | None, rounds: int) -> Any:
        parts = [_part(rows, labels, *m) if m is not None else None for m in (train, valid)]
        return family.fit_model(kind, rows.task, settings, *parts, rounds, patience)

    return fit_family, family, family.tree_count


def _linear_phase(
    rows: Rows, labels: np.ndarray, folds: np.ndarray, settings: dict[str, Any]
) -> Phase:
    """A convex fit: out-of-fold margins from the folds, the model refit on all rows
    (averaging k ridge fits would only approximate it)."""
    loss = LINEAR_LOSS[rows.task]
    by_group = _group_folds(rows, folds)

    def fit(mask: np.ndarray, group_mask: np.ndarray, near: LinearModel | None) -> LinearModel:
        x, y, sizes = _part(rows, labels, mask, group_mask)
        return fit_linear(x, y, loss, settings["l2"], sizes, rows.categorical, near)

    # The fit on all rows first: each fold's, on most of the same rows, starts from it and
    # takes fewer of the optimiser's steps (the same optimum: the loss is convex).
    model = fit(np.ones(len(rows), dtype=bool), np.ones_like(by_group, bool), None)
    oof = np.empty(len(rows))
    for fold in range(settings["folds"]):
        held = folds == fold
        oof[held] = fit(~held, by_group != fold, model).margin(rows.features[held])
    return Phase(oof, model)
