"""SageMaker job `base`: one base model's out-of-fold margins, and the model refit on all.

Channel `train`: features.parquet and manifest.json, as the features step writes them.
Hyperparameters (strings, decoded): model (lambdarank | binary_win | position_regression
| random_forest | linear for races; binary | random_forest | linear, regression |
random_forest | linear otherwise), folds (>= 2), split (group | time), seed,
num_boost_round, learning_rate, num_leaves, min_data_in_leaf, l2 (the linear model's
penalty). Folds are split by group: a race never straddles two folds.
Writes model/: booster.txt (or linear.json), oof.parquet (identifiers, fold, margin) and
base.json.
"""

from __future__ import annotations

import json
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from gallop.models.linear import LinearModel, fit_linear
from gallop.models.onnx_export import native_margin
from gallop.training.config import BASE_DEFAULTS, BASE_MODELS
from gallop.training.contract import Container, JobError, emit_metric, run
from gallop.training.metrics import auc, ndcg_at_k
from gallop.training.outcomes import race_results
from gallop.training.runner import holdout_split

DEFAULTS: dict[str, Any] = {
    "model": None,  # by task: lambdarank, binary or regression
    **BASE_DEFAULTS,
    "job": "base",  # which entry point the training image runs (see layers/)
    "test_share": None,  # hold out the latest share of groups first (the stack job's test)
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
    checks = {
        "folds": lambda v: isinstance(v, int) and v >= 2,
        "split": lambda v: v in ("group", "time"),
        "seed": lambda v: isinstance(v, int),
        "num_boost_round": lambda v: isinstance(v, int) and v >= 1,
        "learning_rate": lambda v: isinstance(v, int | float) and 0 < v <= 1,
        "num_leaves": lambda v: isinstance(v, int) and v >= 2,
        "min_data_in_leaf": lambda v: isinstance(v, int) and v >= 1,
        "l2": lambda v: isinstance(v, int | float) and v >= 0,
        "job": lambda v: v == "base",
        "test_share": lambda v: v is None or (isinstance(v, float) and 0 < v < 1),
    }
    for name, ok in checks.items():
        if not ok(chosen[name]):
            raise JobError(f"hyperparameter {name}={chosen[name]!r} is not valid")
    return chosen


def labels_for(frame: pd.DataFrame, manifest: dict[str, Any], model: str) -> np.ndarray:
    target = frame[manifest["target"]].to_numpy(dtype=np.float64)
    if manifest["task"] != "ranking":
        return target
    share, relevance = race_results(frame, manifest)
    if model in ("binary_win", "random_forest", "linear"):
        return (share > 0).astype(np.float64)
    if model == "position_regression":
        if manifest["target_order"] == "descending":
            # Relevance grades share one scale across queries already; ranking them within
            # a query would make every document of an all-irrelevant query "first".
            return relevance
        # Finishing positions: 1 for the winner down to 0 for the last, whatever the field.
        group = frame[manifest["group"]]
        size = group.map(group.value_counts()).to_numpy(dtype=np.float64)
        rank = (
            frame.groupby(manifest["group"])[manifest["target"]]
            .rank(ascending=True, method="min")
            .to_numpy()
        )
        return 1.0 - (rank - 1) / np.maximum(size - 1, 1)
    return relevance  # lambdarank


def params_for(settings: dict[str, Any], task: str) -> dict[str, Any]:
    objective = {
        "lambdarank": "lambdarank",
        "binary_win": "binary",
        "binary": "binary",
        "position_regression": "regression",
        "regression": "regression",
        "random_forest": "regression" if task == "regression" else "binary",
        "linear": "linear",
    }
    if settings["model"] == "linear":
        loss = {"ranking": "conditional_logit", "binary": "logistic"}.get(task, "squared")
        return {"objective": "linear", "loss": loss, "l2": settings["l2"]}
    params = {
        "objective": objective[settings["model"]],
        "learning_rate": settings["learning_rate"],
        "num_leaves": settings["num_leaves"],
        "min_data_in_leaf": settings["min_data_in_leaf"],
        "seed": settings["seed"],
        # The same inputs give the same model bytes.
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbose": -1,
    }
    if settings["model"] == "random_forest":
        params.update(boosting="rf", bagging_fraction=0.632, bagging_freq=1, feature_fraction=0.8)
    return params


def assign_folds(
    frame: pd.DataFrame, manifest: dict[str, Any], settings: dict[str, Any]
) -> np.ndarray:
    key = manifest["group"] or None
    ids = frame[key].to_numpy() if key else np.arange(len(frame))
    groups, inverse = np.unique(ids, return_inverse=True)
    if len(groups) < settings["folds"]:
        raise JobError(f"{len(groups)} groups cannot make {settings['folds']} folds")
    if settings["split"] == "time" and manifest.get("time"):
        first = frame.groupby(ids)[manifest["time"]].min().reindex(groups).to_numpy()
        order = np.argsort(first, kind="stable")
    else:
        order = np.random.default_rng(settings["seed"]).permutation(len(groups))
    fold_of_group = np.empty(len(groups), dtype=np.int64)
    fold_of_group[order] = np.arange(len(groups)) * settings["folds"] // len(groups)
    return fold_of_group[inverse.reshape(-1)]


def group_sizes(frame: pd.DataFrame, key: str | None) -> np.ndarray | None:
    if not key:
        return None
    return frame.groupby(key, sort=False).size().to_numpy()


def train(
    features: np.ndarray,
    labels: np.ndarray,
    frame: pd.DataFrame,
    key: str | None,
    params: dict[str, Any],
    rounds: int,
) -> lgb.Booster | LinearModel:
    if params["objective"] == "linear":
        sizes = group_sizes(frame, key)
        return fit_linear(features, labels, params["loss"], params["l2"], sizes)
    dataset = lgb.Dataset(
        features,
        labels,
        group=group_sizes(frame, key) if params["objective"] == "lambdarank" else None,
        free_raw_data=False,
    )
    return lgb.train(params, dataset, rounds)


def main(container: Container) -> None:
    channel = container.channel("train")
    manifest = json.loads((channel / "manifest.json").read_text())
    frame = pd.read_parquet(channel / "features.parquet")
    if frame.empty:
        raise JobError("the train channel's features are empty")
    settings = settings_from(container.hyperparameters(), manifest["task"])
    if settings["test_share"]:
        frame = holdout_split(frame, manifest, settings["test_share"])[0].reset_index(drop=True)
    key = manifest["group"]
    frame["_row"] = np.arange(len(frame))  # the stack job aligns margins by channel row
    if key:  # rows of a group together, as LightGBM's group sizes require
        frame = frame.sort_values([key], kind="mergesort").reset_index(drop=True)
    features = frame[manifest["features"]].to_numpy(dtype=np.float32)
    labels = labels_for(frame, manifest, settings["model"])
    params = params_for(settings, manifest["task"])
    folds = assign_folds(frame, manifest, settings)

    margins = np.empty(len(frame))
    for fold in range(settings["folds"]):
        held = folds == fold
        model = train(
            features[~held], labels[~held], frame[~held], key, params, settings["num_boost_round"]
        )
        margins[held] = native_margin(model, features[held])
        print(f"fold {fold + 1}/{settings['folds']}: {int(held.sum())} rows held out", flush=True)
    final = train(features, labels, frame, key, params, settings["num_boost_round"])

    metrics = evaluate(margins, frame, manifest)
    for name, value in metrics.items():
        emit_metric(f"oof_{name}", value)
    out = container.model_dir
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(final, LinearModel):
        final.save(out / "linear.json")
    else:
        final.save_model(str(out / "booster.txt"))
    ident = [c for c in manifest["identifiers"] if c in frame]
    oof = frame[["_row", *ident]].assign(fold=folds, margin=margins)
    oof.to_parquet(out / "oof.parquet", index=False)
    (out / "base.json").write_text(
        json.dumps(
            {
                "model": settings["model"],
                "settings": settings,
                "params": params,
                "features": manifest["features"],
                "rows": len(frame),
                "metrics": metrics,
            },
            indent=2,
            sort_keys=True,
        )
    )


def evaluate(
    margins: np.ndarray, frame: pd.DataFrame, manifest: dict[str, Any]
) -> dict[str, float]:
    target = frame[manifest["target"]].to_numpy(dtype=np.float64)
    if manifest["task"] == "binary":
        return {"auc": auc(margins, target)}
    if manifest["task"] == "regression":  # the margin is the prediction before stacking
        return {"rmse": float(np.sqrt(np.mean((margins - target) ** 2)))}
    relevance = labels_for(frame, manifest, "lambdarank")
    sizes = group_sizes(frame, manifest["group"])
    assert sizes is not None
    return {f"ndcg@{k}": ndcg_at_k(margins, relevance, sizes, k) for k in (1, 3, 5)}


if __name__ == "__main__":
    run(main)
