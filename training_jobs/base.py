"""SageMaker job `base`: one base model, fitted for the stack (gallop.training.bases).

Channels: `train` (features.parquet and manifest.json, as the features step writes them)
and optional `test` (held-out rows, same layout); with the hyperparameter test_share the
train channel is split instead, the latest share of the groups held out, as the stack
job splits it. Hyperparameters (strings, decoded): model (a kind of
gallop.models.catalogue for the task), folds, split (group | time), seed,
num_boost_round (the most rounds; each fold model stops early), early_stopping_rounds,
learning_rate, num_leaves, min_data_in_leaf, l2 (the linear model's penalty), bagging,
time_limit (the run's, for the record), search_seconds and fit_seconds (this job's
budgets for its search and for its folds' fits).
Writes model/: the fitted model's files, margins.parquet (out-of-fold and held-out
margins, row by row) and base.json.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from gallop.layout import BASE_RECORD_FILE, MARGINS_FILE
from gallop.training.bases import BaseFit, BaseFitError, fit_base
from gallop.training.config import (
    BASE_DEFAULTS,
    BASE_MODELS,
    BadRunConfig,
    check_base_settings,
)
from gallop.training.contract import Container, JobError, emit_metric, run
from gallop.training.jobdata import read_job_data
from gallop.training.metrics import auc, ndcg_at_k
from gallop.training.rows import Rows

DEFAULTS: dict[str, Any] = {
    "model": None,  # by task: lambdarank, binary or regression
    **BASE_DEFAULTS,
    "job": "base",  # which entry point the training image runs (see layers/)
    "test_share": None,  # hold out the latest share of groups first (the stack job's test)
    "search_seconds": None,  # this job's share of the run's time_limit (set by gallop)
    "fit_seconds": None,  # for its search, and for fitting its folds
}


def settings_from(raw: dict[str, Any], task: str) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise JobError(f"unknown hyperparameters {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {**DEFAULTS, **raw}
    chosen["model"] = chosen["model"] or {"ranking": "lambdarank"}.get(task, task)
    if chosen["model"] not in BASE_MODELS[task]:
        raise JobError(
            f"hyperparameter model={chosen['model']!r}: for a {task} task use one "
            f"of {sorted(BASE_MODELS[task])}"
        )
    try:
        check_base_settings(chosen)
    except BadRunConfig as exc:
        raise JobError(str(exc)) from None
    share = chosen["test_share"]
    if share is not None and not (isinstance(share, float) and 0 < share < 1):
        raise JobError(f"hyperparameter test_share={share!r} is not valid")
    for name in ("search_seconds", "fit_seconds"):
        budget = chosen[name]
        if budget is not None and not (type(budget) in (int, float) and budget > 0):
            raise JobError(f"hyperparameter {name}={budget!r} is not valid")
    if chosen["job"] != "base":
        raise JobError(f"hyperparameter job={chosen['job']!r} is not valid")
    return chosen


def margins_table(fit: BaseFit, data: Any) -> pd.DataFrame:
    """Every margin the stack job needs, with the rows' identifiers to check alignment:
    part evaluation (out of fold, training rows), held_out (the training rows' model on
    the held-out rows) and final (out of fold, every row)."""
    parts = [
        ("evaluation", data.train, fit.eval_oof, fit.eval_folds),
        ("held_out", data.test, fit.eval_test, None),
        ("final", data.everything, fit.final_oof, fit.final_folds),
    ]
    tables = []
    for name, rows, margin, folds in parts:
        if rows is None:
            continue
        table = rows.identifiers().assign(part=name, position=np.arange(len(rows)), margin=margin)
        tables.append(table.assign(fold=folds if folds is not None else -1))
    return pd.concat(tables, ignore_index=True)


def main(container: Container) -> None:
    raw = container.hyperparameters()
    data = read_job_data(container, raw.get("test_share"))
    settings = settings_from(raw, data.manifest["task"])
    try:
        fit = fit_base(
            settings["model"],
            settings,
            data.train,
            data.test,
            data.everything,
            progress=lambda line: print(line, flush=True),
        )
    except BaseFitError as exc:
        raise JobError(str(exc)) from None

    metrics = evaluate(fit.eval_oof, data.train)
    for name, value in metrics.items():
        emit_metric(f"oof_{name}", value)
    out = container.model_dir
    fit.model.save(out)
    margins_table(fit, data).to_parquet(out / MARGINS_FILE, index=False)
    (out / BASE_RECORD_FILE).write_text(
        json.dumps(
            {
                "model": settings["model"],
                "family": fit.model.family,
                "settings": settings,
                "features": data.manifest["features"],
                "rows": {"train": len(data.train), "all": len(data.everything or data.train)},
                "metrics": metrics,
                "trace": fit.trace,
            },
            indent=2,
            sort_keys=True,
        )
    )


def evaluate(margins: np.ndarray, rows: Rows) -> dict[str, float]:
    if rows.task == "binary":
        return {"auc": auc(margins, rows.target)}
    if rows.task == "regression":  # the margin is the prediction before stacking
        return {"rmse": float(np.sqrt(np.mean((margins - rows.target) ** 2)))}
    assert rows.sizes is not None
    return {f"ndcg@{k}": ndcg_at_k(margins, rows.relevance, rows.sizes, k) for k in (1, 3, 5)}


if __name__ == "__main__":
    run(main)
