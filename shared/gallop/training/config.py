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


def stack_hyperparameters(run_id: str, version_id: str, code: str) -> dict[str, str]:
    """What the stack job writes into the model's manifest, to tie the model to its run."""
    return {"run_id": run_id, "data_version": version_id, "code_version": code}
