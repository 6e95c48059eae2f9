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
# A run's hyperparameters go to every base job, except these, which the stack job takes
# (training_jobs/stack.py checks them): the meta-learner's penalty, the calibration, the
# intervals' coverage and the betting simulation's margin and stake.
STACK_HYPERPARAMETERS = ("meta_l2", "calibration", "coverage", "bet_margin", "kelly_fraction")


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
    out and giving its default are the same run."""
    return {
        "dataset": dataset,
        "task": task,
        "bases": bases_for(task, bases),
        "hyperparameters": dict(hyperparameters),
        "test_share": test_share,
    }


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
