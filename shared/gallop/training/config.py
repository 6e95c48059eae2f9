"""A run's configuration: which base models, their hyperparameters, the held-out share.

The base job (training_jobs/base.py) checks its model against the same catalogue; it
lives here, free of LightGBM, so that the API can check a request before anything runs.
"""

from __future__ import annotations

from typing import Any

BASE_MODELS: dict[str, tuple[str, ...]] = {
    "ranking": ("lambdarank", "binary_win", "position_regression", "random_forest", "linear"),
    "binary": ("binary", "random_forest", "linear"),
    "regression": ("regression", "random_forest", "linear"),
}
DEFAULT_BASES: dict[str, tuple[str, ...]] = {
    "ranking": ("lambdarank", "binary_win", "position_regression", "linear"),
    "binary": ("binary", "random_forest", "linear"),
    "regression": ("regression", "random_forest", "linear"),
}
ALL_BASE_MODELS = sorted({name for names in BASE_MODELS.values() for name in names})
# Set by gallop per job, never by the caller.
RESERVED_HYPERPARAMETERS = ("model", "job")
# What a run may set, with the defaults the jobs use (training_jobs/ checks the values).
# A run's hyperparameters go to every base job, except the stack job's own: the
# meta-learner's penalty, the calibration, the intervals' coverage and the betting
# simulation's margin and stake.
BASE_DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "split": "group",
    "seed": 0,
    "num_boost_round": 100,  # LightGBM's own defaults
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "l2": 1e-2,  # the linear base's penalty
}
STACK_DEFAULTS: dict[str, Any] = {
    "meta_l2": 1e-3,
    "calibration": "platt",
    "coverage": 0.9,
    "bet_margin": 0.05,
    "kelly_fraction": 0.25,
}
STACK_HYPERPARAMETERS = tuple(STACK_DEFAULTS)


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
    return {
        "dataset": dataset,
        "task": task,
        "bases": bases_for(task, bases),
        "hyperparameters": with_defaults(hyperparameters),
        "test_share": test_share,
    }


def with_defaults(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    defaults = {**BASE_DEFAULTS, **STACK_DEFAULTS}
    chosen = {**defaults, **hyperparameters}
    for name, value in chosen.items():  # a whole number where a fraction is meant: 1 is 1.0
        if isinstance(defaults.get(name), float) and type(value) is int:
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
    return {**chosen, "run_id": run_id, "data_version": version_id, "code_version": code}
