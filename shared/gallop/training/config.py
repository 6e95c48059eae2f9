"""A run's configuration: which base models, their hyperparameters, the held-out share.

The base job (training_jobs/base.py) checks its model against the same catalogue; it
lives here, free of LightGBM, so that the API can check a request before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gallop.models.catalogue import CATALOGUE, DEFAULT_BASES, kinds_for

BASE_MODELS: dict[str, tuple[str, ...]] = {
    task: kinds_for(task) for task in ("ranking", "binary", "regression")
}
ALL_BASE_MODELS = sorted(CATALOGUE)
__all__ = ["DEFAULT_BASES"]
# Set by gallop per job, never by the caller.
RESERVED_HYPERPARAMETERS = ("model", "job", "search_seconds", "fit_seconds")
# What a run may set, with the defaults the jobs use (training_jobs/ checks the values).
# A run's hyperparameters go to every base job, except the stack job's own: the
# meta-learner's penalty, the calibration, the intervals' coverage and the betting
# simulation's margin and stake.
BASE_DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "split": "group",
    "seed": 0,
    # The most rounds a fold model may take: each stops early on its held-out fold.
    "num_boost_round": 2000,
    "early_stopping_rounds": 50,
    "learning_rate": None,  # by the data's size (gallop.models.catalogue.learning_rate)
    "num_leaves": None,  # each kind's own (31 unless the kind says otherwise)
    "min_data_in_leaf": None,
    "l2": 1e-2,  # the linear base's penalty
    "bagging": True,  # serve the k fold models' mean; false: one refit on all rows
    # Seconds for the whole run; with a limit, each boosted base searches its
    # hyperparameters first (gallop.training.search) in its share of SEARCH_SHARE of it.
    "time_limit": None,
}
BASE_JOBS_AT_ONCE = 4  # on SageMaker: the state machine's map runs this many base jobs
SEARCH_SHARE = 0.4  # of a run's time_limit: each boosted base's search
FIT_SHARE = 0.3  # and its folds' fits; the rest: features, the stack job, start-up
MAX_TIME_LIMIT = 86_400
# Bounds on what a run may ask, checked before it starts: the cost of a run is bounded.
MAX_BOOST_ROUNDS = 10_000
MAX_FOLDS = 20


def _whole(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and v >= low and (high is None or v <= high)


def _number(low: float, high: float | None = None, open_low: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        above = v > low if open_low else v >= low
        return above and (high is None or v <= high)

    return ok


BASE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "folds": (_whole(2, MAX_FOLDS), f"a whole number from 2 to {MAX_FOLDS}"),
    "split": (lambda v: v in ("group", "time"), "'group' or 'time'"),
    "seed": (_whole(0), "a whole number >= 0"),
    "num_boost_round": (
        _whole(1, MAX_BOOST_ROUNDS),
        f"a whole number from 1 to {MAX_BOOST_ROUNDS}",
    ),
    "early_stopping_rounds": (_whole(1, MAX_BOOST_ROUNDS), "a whole number >= 1"),
    "learning_rate": (
        lambda v: v is None or _number(0, 1, open_low=True)(v),
        "null or a number in (0, 1]",
    ),
    "num_leaves": (lambda v: v is None or _whole(2, 131_072)(v), "null or a whole number >= 2"),
    "min_data_in_leaf": (lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
    "l2": (_number(0), "a number >= 0"),
    "bagging": (lambda v: type(v) is bool, "true or false"),
    "time_limit": (
        lambda v: v is None or _number(1, MAX_TIME_LIMIT)(v),
        f"null or seconds from 1 to {MAX_TIME_LIMIT}",
    ),
}


def with_search_budget(
    hyperparameters: dict[str, Any], bases: int, parallel: int
) -> dict[str, Any]:
    """A base job's hyperparameters, with its time budgets when the run has a time_limit:
    its wave's share of SEARCH_SHARE of the limit for the search (`search_seconds`) and of
    FIT_SHARE for fitting its folds (`fit_seconds`), `parallel` base jobs running at once.
    The rest of the limit is the features', the stack job's and the jobs' start-up."""
    time_limit = hyperparameters.get("time_limit")
    if not time_limit:
        return dict(hyperparameters)
    wave = float(time_limit) / -(-bases // max(1, parallel))
    return {
        **hyperparameters,
        "search_seconds": round(SEARCH_SHARE * wave, 3),
        "fit_seconds": round(FIT_SHARE * wave, 3),
    }


def check_base_settings(chosen: dict[str, Any]) -> None:
    """BadRunConfig naming the first setting that is not valid."""
    for name, (ok, expected) in BASE_CHECKS.items():
        if name in chosen and not ok(chosen[name]):
            raise BadRunConfig(
                f"hyperparameter {name}={chosen[name]!r} is not valid: expected {expected}"
            )


STACK_DEFAULTS: dict[str, Any] = {
    "meta_l2": 1e-3,
    "calibration": "platt",
    "coverage": 0.9,
    "bet_margin": 0.05,
    "kelly_fraction": 0.25,
}
STACK_HYPERPARAMETERS = tuple(STACK_DEFAULTS)
FRACTIONS = ("learning_rate",)  # fractions whose default (None: by data size) is not one


class BadRunConfig(ValueError):
    pass


def bases_for(task: str, requested: list[str] | None) -> list[str]:
    """The requested base models, checked against the task, or the task's defaults."""
    if requested is None:
        return list(DEFAULT_BASES[task])
    wrong = [name for name in requested if name not in BASE_MODELS[task]]
    if wrong:
        raise BadRunConfig(
            f"bases: {', '.join(map(repr, wrong))} cannot be trained for a {task} task; "
            f"valid: {', '.join(BASE_MODELS[task])}"
        )
    return list(requested)


def run_config(
    dataset: str,
    task: str,
    bases: list[str] | None,
    hyperparameters: dict[str, Any],
    test_share: float,
) -> dict[str, Any]:
    """The config a run id is computed from: defaults filled in, so that leaving a value
    out and giving its default (100 or 100.0) are the same run."""
    chosen = with_defaults(hyperparameters)
    check_base_settings(chosen)
    return {
        "dataset": dataset,
        "task": task,
        "bases": bases_for(task, bases),
        "hyperparameters": chosen,
        "test_share": test_share,
    }


def with_defaults(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    defaults = {**BASE_DEFAULTS, **STACK_DEFAULTS}
    chosen = {**defaults, **hyperparameters}
    for name, value in chosen.items():  # a whole number where a fraction is meant: 1 is 1.0
        if (isinstance(defaults.get(name), float) or name in FRACTIONS) and type(value) is int:
            chosen[name] = float(value)
    return dict(sorted(chosen.items()))


def split_hyperparameters(chosen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what every base job takes, what the stack job takes)."""
    stack = {k: v for k, v in chosen.items() if k in STACK_HYPERPARAMETERS}
    return {k: v for k, v in chosen.items() if k not in stack}, stack


def base_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    return split_hyperparameters(config["hyperparameters"])[0]


def stack_hyperparameters(
    config: dict[str, Any], run_id: str, version_id: str, code: str
) -> dict[str, Any]:
    """The stack job's settings from the run's hyperparameters, and what it writes into
    the model's manifest to tie the model to its run."""
    chosen = split_hyperparameters(config["hyperparameters"])[1]
    seed = config["hyperparameters"].get("seed", BASE_DEFAULTS["seed"])  # the meta's folds too
    return {
        **chosen,
        "seed": seed,
        "run_id": run_id,
        "data_version": version_id,
        "code_version": code,
    }
