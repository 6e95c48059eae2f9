"""SageMaker job `stack`: the meta-learner on the base models' out-of-fold margins,
calibration, evaluation, and the whole stack exported as one ONNX graph (checked for
parity), with its manifest and report: the model artifact (gallop.training.stacking).

Channels: `train` (features.parquet, manifest.json), `bases` (one folder per base job's
model/ output, or its model.tar.gz), optional `test` (held-out rows, same layout as
train). With the hyperparameter test_share the train channel is split instead, as the
base jobs split it (the latest share of the groups held out); with neither, the stack is
evaluated out of fold. Hyperparameters: meta_l2 (meta-learner penalty, 0.001),
calibration (binary: platt | isotonic), coverage (regression intervals, 0.9), bet_margin
(0.05) and kelly_fraction (0.25) for the betting simulation when the data has odds, seed,
and run_id, data_version, code_version, recorded in the manifest.
Writes model/: model.onnx, manifest.json, report.html and, per base model in the graph,
base_<i>.explain.json (what the serving side explains it with).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np

from gallop.layout import MANIFEST_FILE, ONNX_FILE, REPORT_HTML_FILE, explain_file
from gallop.manifests import ModelManifest, kind_of_metrics_key
from gallop.training import stacking
from gallop.training.config import (
    STACK_CHECKS,
    STACK_DEFAULTS,
    BadRunConfig,
    base_checks,
    check_settings,
)
from gallop.training.contract import Container, JobError, emit_metric, run
from gallop.training.jobdata import JobData, read_job_data
from gallop.training.report import render_report

DEFAULTS: dict[str, Any] = {
    **STACK_DEFAULTS,
    "seed": 0,
    "run_id": None,
    "data_version": None,
    "code_version": None,
    "job": "stack",
    "test_share": None,
}
# What the API checks a run's stack settings with (one home), and this job's own.
CHECKS = {
    **STACK_CHECKS,
    "seed": base_checks()["seed"],
    "job": (lambda v: v == "stack", "'stack'"),
    "test_share": (lambda v: v is None or (isinstance(v, float) and 0 < v < 1), "in (0, 1)"),
}


def settings_from(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise JobError(f"unknown hyperparameters {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {**DEFAULTS, **raw}
    try:
        check_settings(chosen, CHECKS)
    except BadRunConfig as exc:
        raise JobError(str(exc)) from None
    return chosen


def main(container: Container) -> None:
    settings = settings_from(container.hyperparameters())
    data = read_job_data(container, settings["test_share"])
    scratch = container.base / "scratch"
    bases = stacking.load_bases(container.channel("bases"), scratch, data)
    task = data.manifest["task"]

    judged = stacking.judge(bases, data, settings)
    for metric, value in judged.metrics["stack"].items():
        emit_metric(metric.replace("@", "_at_"), value)
    served = stacking.served_meta(bases, data, judged, settings)
    in_graph, meta = stacking.served_parts(bases, served.meta)
    outputs = stacking.graph_outputs(task)
    model_bytes = stacking.export(in_graph, meta, len(data.manifest["features"]))
    checked = judged.rows
    native = np.column_stack([b.model.margin(checked.features) for b in in_graph])
    parity = stacking.check_parity(model_bytes, meta, native, checked, outputs)
    emit_metric("onnx_parity_max_abs", max(parity.values()))  # relative where above 1

    out = container.model_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_FILE).write_bytes(model_bytes)
    for i, base in enumerate(in_graph):
        (out / explain_file(i)).write_text(json.dumps(base.model.explanation()))
    artifact = manifest_of(data, bases, in_graph, meta, served, judged, parity, settings)
    artifact["betting"] = stacking.betting_of(judged, data.manifest, settings)
    artifact["top_features"] = stacking.importance(in_graph, meta, checked)
    # A metric with no value on these rows (AUC of one class, R² of a constant) is null:
    # JSON has no NaN, and Postgres' json type refuses the token.
    text = json.dumps(finite(artifact), indent=2, sort_keys=True, allow_nan=False)
    (out / MANIFEST_FILE).write_text(text)
    (out / REPORT_HTML_FILE).write_text(render_report(report_of(artifact, judged)))
    shutil.rmtree(scratch, ignore_errors=True)


def manifest_of(
    data: JobData,
    bases: list[stacking.Base],
    in_graph: list[stacking.Base],
    meta: Any,
    served: Any,
    judged: stacking.Judged,
    parity: dict[str, float],
    settings: dict[str, Any],
) -> ModelManifest:
    """The model's manifest: what serving, the registry and the API read (one builder)."""
    manifest = data.manifest
    everything = data.everything or data.train
    return {
        "task": manifest["task"],
        "features": manifest["features"],
        "categorical": manifest.get("categorical") or {},
        "onnx_input": "features",
        "onnx_outputs": stacking.graph_outputs(manifest["task"]),
        "group": manifest["group"],
        "identifiers": manifest["identifiers"],
        "dataset": manifest.get("dataset"),
        "target": manifest["target"],
        "base_models": [
            {
                "model": b.name,
                "weight": float(w),
                "kind": b.model.family,
                "explain": explain_file(i),
                "fit": b.record.get("trace", {}).get("model"),
            }
            for i, (b, w) in enumerate(zip(in_graph, meta.weights, strict=True))
        ],
        "meta": {
            "bias": meta.bias,
            "calibration": meta.calibration,
            "chosen": served.chosen,
            "selection_loss": served.loss_name,
            "selection": served.losses,
            "weights": {
                b.name: w for b, w in zip(bases, _all_weights(bases, in_graph, meta), strict=True)
            },
        },
        "metrics": judged.metrics,
        "against_best_base": stacking.against_best_base(judged),
        "onnx_parity": parity,
        "evaluated_on": "test" if judged.held_out else "out-of-fold",
        "rows": {
            "train": len(data.train),
            "evaluated": len(judged.rows),
            "served_model_fitted_on": len(everything),
            "single_row_groups_left_out": everything.left_out_groups,
        },
        "bagging": bool(bases[0].record.get("settings", {}).get("bagging", True)),
        # Each base's hyperparameter search (a run with a time_limit), trial by trial.
        "search": {
            b.name: b.record["trace"]["search"]
            for b in bases
            if b.record.get("trace", {}).get("search")
        },
        "data_version": settings["data_version"],
        "run_id": settings["run_id"],
        "code_version": settings["code_version"],
        "feature_spec_hash": manifest.get("spec_hash"),
        # Explanations: the stacked score is bias + sum of weight x base margin, and each
        # base margin splits exactly into per-feature terms (TreeSHAP, or linear terms).
        "explain": {"method": "meta weights x (TreeSHAP | linear terms) of each base"},
    }


def _all_weights(bases: list[Any], in_graph: list[Any], meta: Any) -> list[float]:
    weight = {id(b): float(w) for b, w in zip(in_graph, meta.weights, strict=True)}
    return [weight.get(id(b), 0.0) for b in bases]


def finite(value: Any) -> Any:
    """The value with every NaN or infinity inside it replaced by None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def report_of(artifact: ModelManifest, judged: stacking.Judged) -> dict[str, Any]:
    metrics = judged.metrics
    ndcg = {
        name: {k.split("@")[1]: v for k, v in values.items() if k.startswith("ndcg@")}
        for name, values in metrics.items()
    }
    rows = artifact["rows"]
    facts = {
        "run id": artifact["run_id"] or "–",
        "data version": artifact["data_version"] or "–",
        "code version": artifact["code_version"] or "–",
        "rows trained on (judged models)": rows["train"],
        f"rows evaluated ({artifact['evaluated_on']})": rows["evaluated"],
        "served model fitted on (training and held-out rows)": rows["served_model_fitted_on"],
        "served base models": "the bag of the fold models"
        if artifact["bagging"]
        else "one refit on all rows",
        "meta-learner (chosen out of fold)": artifact["meta"]["chosen"],
        "single-row groups left out of training": rows["single_row_groups_left_out"],
        "ONNX parity (max relative gap)": f"{max(artifact['onnx_parity'].values()):.2e}",
    }
    if "coverage" in artifact["meta"]["calibration"]:
        facts["nominal_coverage"] = artifact["meta"]["calibration"]["coverage"]
    selection = {
        name: {artifact["meta"]["selection_loss"]: loss}
        for name, loss in artifact["meta"]["selection"].items()
    }
    report: dict[str, Any] = {
        "title": f"gallop model {artifact['run_id'] or ''} ({artifact['task']})".replace("  ", " "),
        "task": artifact["task"],
        "facts": facts,
        "metrics": metrics,
        "against_best_base": against_rows(artifact["against_best_base"]),
        "calibration": judged.curves,
        "weights": [{"model": m, "weight": w} for m, w in artifact["meta"]["weights"].items()],
        "selection": selection,
        "importance": artifact["top_features"],
    }
    if artifact["task"] == "ranking":
        report["ndcg"] = ndcg
    if artifact["search"]:
        report["search"] = {
            f"{name} {i + 1}{' (chosen)' if trial['params'] == search['chosen'] else ''}": {
                **trial["params"],
                "loss": trial["loss"],
                "rounds": trial["rounds"],
            }
            for name, search in artifact["search"].items()
            for i, trial in enumerate(search["trials"])
        }
    if artifact["betting"]:
        report["roi"] = artifact["betting"]
    if artifact["task"] == "regression":
        stack = metrics["stack"]
        report["intervals"] = {
            "nominal": artifact["meta"]["calibration"]["coverage"],
            "coverage": stack["coverage"],
            "width": stack["interval_width"],
        }
    return report


def against_rows(against: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stack against its best base, a table row per metric."""
    return {
        m["metric"]: {
            "best base": kind_of_metrics_key(m["base"]),
            "stack": m["stack"],
            "best base's": m["best_base"],
            "stack's advantage": f"{m['advantage']:+.4f}",
            "95 % interval": f"{m['low']:+.4f} to {m['high']:+.4f}",
            f"{against['unit']}s": m["units"],
            "verdict": "not below" if m["not_below"] else "below",
        }
        for m in against["metrics"]
    }


if __name__ == "__main__":
    run(main)
