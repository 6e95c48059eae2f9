"""A run's configuration: which base models, their hyperparameters, the held-out share.

The base job (training_jobs/base.py) checks its model against the same catalogue; it
lives here, free of LightGBM, so that the API can check a request before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gallop.echo import clip
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
SEARCH_SHARE = 0.35  # of a run's time_limit: each boosted base's search
# and its folds' fits; the rest: features, the stack job, start-up, and a twentieth left
# for the estimate's error (a base job on 100,000 runners took 16-50 % over it here)
FIT_SHARE = 0.3
MAX_FOLDS = 20
# A run is stopped at its time_limit and this much more: the budgets above are estimates
# (benchmarks/training.py accepts 1.1 x the limit). A run without one, at the default.
TIME_LIMIT_SLACK = 1.25


@dataclass(frozen=True)
class CostBounds:
    """What a run may cost, checked before it is queued: the most boosting rounds and the
    longest time_limit (settings run_max_boost_rounds, run_time_limit_max). The jobs check
    what a value means, not what it costs: None, no bound."""

    max_boost_rounds: int | None = None
    max_time_limit: float | None = None

    @classmethod
    def of(cls, settings: Any) -> CostBounds:
        return cls(settings.run_max_boost_rounds, settings.run_time_limit_max)


@dataclass(frozen=True)
class SettingProblem:
    """One hyperparameter that is not valid: its name, the value given, and why."""

    name: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"hyperparameter {self.name}={clip(repr(self.value))} is not valid: {self.reason}"


class BadRunConfig(ValueError):
    """A run that cannot be trained as asked: every problem found, not the first."""

    def __init__(self, message: str, problems: list[SettingProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


Check = tuple[Callable[[Any], bool], str]


def _whole(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and v >= low and (high is None or v <= high)


def _number(
    low: float, high: float | None = None, open_low: bool = False, open_high: bool = False
) -> Callable[[Any], bool]:
    """A JSON number (true and false are not, nor NaN or infinity) within the bounds."""

    def ok(v: Any) -> bool:
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        above = v > low if open_low else v >= low
        below = high is None or (v < high if open_high else v <= high)
        return above and below

    return ok


def _at_most(high: float | None) -> str:
    return f" to {high:g}" if high is not None else " or more"


def base_checks(bounds: CostBounds = CostBounds()) -> dict[str, Check]:
    """What each base job setting must be: (check, what is expected, in words)."""
    rounds, seconds = bounds.max_boost_rounds, bounds.max_time_limit
    return {
        "folds": (_whole(2, MAX_FOLDS), f"a whole number from 2 to {MAX_FOLDS}"),
        "split": (lambda v: v in ("group", "time"), "'group' or 'time'"),
        "seed": (_whole(0), "a whole number >= 0"),
        "num_boost_round": (_whole(1, rounds), f"a whole number from 1{_at_most(rounds)}"),
        "early_stopping_rounds": (_whole(1, rounds), f"a whole number from 1{_at_most(rounds)}"),
        "learning_rate": (
            lambda v: v is None or _number(0, 1, open_low=True)(v),
            "null or a number in (0, 1]",
        ),
        "num_leaves": (lambda v: v is None or _whole(2, 131_072)(v), "null or a whole number >= 2"),
        "min_data_in_leaf": (lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
        "l2": (_number(0), "a number >= 0"),
        "bagging": (lambda v: type(v) is bool, "true or false"),
        "time_limit": (
            lambda v: v is None or _number(1, seconds)(v),
            f"null or seconds from 1{_at_most(seconds)}",
        ),
    }


def invalid_settings(chosen: dict[str, Any], checks: dict[str, Check]) -> list[SettingProblem]:
    """The settings in `chosen` that fail their check."""
    return [
        SettingProblem(name, chosen[name], f"expected {expected}")
        for name, (ok, expected) in checks.items()
        if name in chosen and not ok(chosen[name])
    ]


def run_deadline(hyperparameters: dict[str, Any], default_seconds: float) -> float:
    """Seconds after which a run's jobs are stopped and the run fails."""
    limit = hyperparameters.get("time_limit")
    return float(limit) * TIME_LIMIT_SLACK if limit else float(default_seconds)


def check_settings(chosen: dict[str, Any], checks: dict[str, Check]) -> None:
    """BadRunConfig listing every setting of `chosen` that is not valid."""
    problems = invalid_settings(chosen, checks)
    if problems:
        raise BadRunConfig("; ".join(map(str, problems)), problems)


def check_base_settings(chosen: dict[str, Any], bounds: CostBounds = CostBounds()) -> None:
    check_settings(chosen, base_checks(bounds))


def hyperparameter_problems(
    requested: dict[str, Any], bounds: CostBounds = CostBounds()
) -> list[SettingProblem]:
    """Everything wrong with the hyperparameters a run asks for: names it may not set,
    values of the wrong type or out of range, and beyond what a run may cost."""
    known = {**BASE_DEFAULTS, **STACK_DEFAULTS}
    problems = []
    for name, value in requested.items():
        if name in RESERVED_HYPERPARAMETERS:
            problems.append(SettingProblem(name, value, "set by gallop (choose models with bases)"))
        elif name not in known:
            problems.append(
                SettingProblem(clip(name), value, f"unknown; a run may set {', '.join(known)}")
            )
    checks = {**base_checks(bounds), **STACK_CHECKS}
    return problems + invalid_settings(requested, checks)


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


STACK_DEFAULTS: dict[str, Any] = {
    "meta_l2": 1e-3,
    "calibration": "platt",
    "coverage": 0.9,
    "bet_margin": 0.05,
    "kelly_fraction": 0.25,
}
STACK_HYPERPARAMETERS = tuple(STACK_DEFAULTS)
STACK_CHECKS: dict[str, Check] = {
    "meta_l2": (_number(0), "a number >= 0"),
    "calibration": (lambda v: v in ("platt", "isotonic"), "'platt' or 'isotonic'"),
    "coverage": (_number(0, 1, open_low=True, open_high=True), "a number in (0, 1)"),
    "bet_margin": (_number(0), "a number >= 0"),
    "kelly_fraction": (_number(0, 1, open_low=True), "a number in (0, 1]"),
}
FRACTIONS = ("learning_rate",)  # fractions whose default (None: by data size) is not one


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
    bounds: CostBounds = CostBounds(),
) -> dict[str, Any]:
    """The config a run id is computed from: defaults filled in, so that leaving a value
    out and giving its default (100 or 100.0) are the same run. BadRunConfig lists every
    problem of the hyperparameters."""
    problems = hyperparameter_problems(hyperparameters, bounds)
    if problems:
        raise BadRunConfig("; ".join(map(str, problems)), problems)
    chosen = with_defaults(hyperparameters)
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
