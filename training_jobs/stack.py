"""SageMaker job `stack`: the meta-learner on the base models' out-of-fold margins,
calibration, evaluation, and the whole stack exported as one ONNX graph (checked for
parity), with its manifest and report: the model artifact.

Channels: `train` (features.parquet, manifest.json), `bases` (one folder per base job's
model/ output, or its model.tar.gz), optional `test` (held-out rows, same layout as
train). With the hyperparameter test_share the train channel is split instead, as the
base jobs split it (the latest share of the groups held out); with neither, the stack is
evaluated out of fold. Hyperparameters: meta_l2 (meta-learner
penalty, 0.001), calibration (binary: platt | isotonic), coverage (regression intervals,
0.9), bet_margin (0.05) and kelly_fraction (0.25) for the betting simulation when the
data has odds, and run_id, data_version, code_version, recorded in the manifest.
Writes model/: model.onnx, manifest.json, report.html and each base model (for
explanations): base_<i>.txt (LightGBM) or base_<i>.json (linear).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pandas as pd

from gallop.models.linear import LinearModel
from gallop.models.onnx_export import native_margin, stack_to_onnx
from gallop.models.stack import Meta, fit_meta, group_starts
from gallop.training.config import STACK_DEFAULTS
from gallop.training.contract import Container, JobError, emit_metric, run
from gallop.training.metrics import (
    betting,
    binary_metrics,
    ranking_metrics,
    regression_metrics,
    reliability,
)
from gallop.training.outcomes import race_results
from gallop.training.report import render_report
from gallop.training.runner import holdout_split

PARITY = 1e-5
DEFAULTS: dict[str, Any] = {
    **STACK_DEFAULTS,
    "run_id": None,
    "data_version": None,
    "code_version": None,
    "job": "stack",
    "test_share": None,
}
CHECKS = {
    "meta_l2": lambda v: isinstance(v, int | float) and v >= 0,
    "calibration": lambda v: v in ("platt", "isotonic"),
    "coverage": lambda v: isinstance(v, float) and 0 < v < 1,
    "bet_margin": lambda v: isinstance(v, int | float) and v >= 0,
    "kelly_fraction": lambda v: isinstance(v, int | float) and 0 < v <= 1,
    "job": lambda v: v == "stack",
    "test_share": lambda v: v is None or (isinstance(v, float) and 0 < v < 1),
}


def settings_from(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise JobError(f"unknown hyperparameters {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {**DEFAULTS, **raw}
    for name, ok in CHECKS.items():
        if not ok(chosen[name]):
            raise JobError(f"hyperparameter {name}={chosen[name]!r} is not valid")
    return chosen


@dataclass(frozen=True)
class Rows:
    """A channel's rows (a race's runners together) and what they are evaluated against."""

    frame: pd.DataFrame
    features: np.ndarray  # float32, as fed to the graph
    target: np.ndarray  # a runner's share of its race's win (ranking), 0/1, or the value
    sizes: np.ndarray | None  # rows per race, in order (ranking)
    relevance: np.ndarray | None  # graded relevance for NDCG (ranking)
    graded: np.ndarray | None = None  # a share of the group's gain, for relevance grades


def read_channel(channel: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    manifest = json.loads((channel / "manifest.json").read_text())
    return pd.read_parquet(channel / "features.parquet"), manifest


def rows_of(frame: pd.DataFrame, manifest: dict[str, Any]) -> Rows:
    frame = frame.reset_index(drop=True)
    frame["_row"] = np.arange(len(frame))  # the base jobs' out-of-fold rows refer to it
    group, target = manifest["group"], manifest["target"]
    values = frame[target].to_numpy(dtype=np.float64)
    if manifest["task"] != "ranking":
        return Rows(frame, frame[manifest["features"]].to_numpy(np.float32), values, None, None)
    frame = frame.sort_values([group], kind="mergesort").reset_index(drop=True)
    share, relevance = race_results(frame, manifest)
    sizes = frame.groupby(group, sort=False).size().to_numpy()
    features = frame[manifest["features"]].to_numpy(np.float32)
    graded = None
    if manifest["target_order"] == "descending":  # relevance grades, not positions
        gain = 2.0**relevance - 1.0
        total = frame.assign(gain=gain).groupby(group, sort=False)["gain"].transform("sum")
        graded = gain / np.maximum(total.to_numpy(), 1e-12)
    return Rows(frame, features, share, sizes, relevance, graded)


def decided_rows(rows: Rows) -> np.ndarray:
    """Rows that say something about calibration: all, but for races with no winner."""
    if rows.sizes is None:
        return np.ones(len(rows.target), dtype=bool)
    return np.repeat(np.add.reduceat(rows.target, group_starts(rows.sizes)) > 0, rows.sizes)


def load_bases(channel: Path, scratch: Path) -> list[Path]:
    for archive in sorted(channel.rglob("*.tar.gz")):  # SageMaker hands over model.tar.gz
        target = scratch / archive.parent.relative_to(channel)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    found = {
        p.parent.relative_to(root): p.parent
        for root in (channel, scratch)
        if root.exists()
        for p in root.rglob("base.json")
    }
    folders = [found[name] for name in sorted(found)]  # in the channel's order, archives or not
    if not folders:
        raise JobError("the bases channel holds no base job output (base.json)")
    return folders


def load_base(folder: Path) -> lgb.Booster | LinearModel:
    if (folder / "linear.json").exists():
        return LinearModel.load(folder / "linear.json")
    return lgb.Booster(model_file=str(folder / "booster.txt"))


def base_margins(bases: list[Any], features: np.ndarray) -> np.ndarray:
    return np.column_stack([native_margin(b, features) for b in bases])


def evaluate(
    task: str, meta: Meta, margins: np.ndarray, rows: Rows
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    score = meta.score(margins)
    outputs = meta.outputs(score, rows.sizes)
    if task == "ranking":
        assert rows.sizes is not None and rows.relevance is not None
        probability = outputs["win_probability"]
        return ranking_metrics(score, probability, rows.relevance, rows.target, rows.sizes), outputs
    if task == "binary":
        return binary_metrics(outputs["probability"], rows.target), outputs
    return regression_metrics(
        outputs["value"], rows.target, outputs["lower"], outputs["upper"]
    ), outputs


def in_time_order(rows: Rows, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Row order and group sizes with races (or rows) in time order, for the betting run."""
    time, group = manifest.get("time"), manifest.get("group")
    keys = [c for c in (time, group) if c]
    order = (
        np.lexsort([rows.frame[c].to_numpy() for c in reversed(keys)])
        if keys
        else np.arange(len(rows.frame))
    )
    if rows.sizes is None:
        return order, np.ones(len(order), dtype=np.int64)
    race = rows.frame[group].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, race[1:] != race[:-1]])
    return order, np.diff(np.r_[starts, len(race)])


def check_parity(
    model_bytes: bytes, meta: Meta, margins: np.ndarray, rows: Rows, outputs: list[str]
) -> dict[str, float]:
    """The graph against the native stack on the evaluated rows: score and margins within
    PARITY (relative to the value where it exceeds 1), and the same order within every
    race for runners whose native scores are more than PARITY apart (closer ones may
    swap within float32's summing error without the graph being wrong), and the
    calibrated outputs within PARITY too."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = dict(zip(outputs, session.run(outputs, {"features": rows.features}), strict=True))
    native = meta.score(margins)

    def gap(exported: np.ndarray, expected: np.ndarray) -> float:
        return float((np.abs(exported - expected) / np.maximum(np.abs(expected), 1.0)).max())

    gaps = {"score": gap(got["score"][:, 0], native), "margins": gap(got["margins"], margins)}
    if max(gaps.values()) > PARITY:
        raise JobError(
            f"ONNX differs from the native stack by {max(gaps.values()):.2e} (> {PARITY})"
        )
    if rows.sizes is not None:
        race = np.repeat(np.arange(len(rows.sizes)), rows.sizes)
        order = np.lexsort((-native, race))  # native order, race by race
        ahead, behind = order[:-1], order[1:]
        apart = native[ahead] - native[behind] > PARITY * np.maximum(np.abs(native[ahead]), 1.0)
        swapped = got["score"][ahead, 0] <= got["score"][behind, 0]
        if (apart & swapped & (race[ahead] == race[behind])).any():
            raise JobError("ONNX orders the runners of some race differently from the native stack")
    calibrated = meta.outputs(native, rows.sizes)
    settled = away_from_steps(native, meta.calibration)
    for name in outputs[2:]:
        gaps[name] = gap(got[name][settled, 0], calibrated[name][settled]) if settled.any() else 0.0
        if gaps[name] > PARITY:
            raise JobError(f"ONNX {name} differs from the native stack's by {gaps[name]:.2e}")
    return gaps


def away_from_steps(score: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Rows whose calibrated output the graph must reproduce: all, but for an isotonic
    curve those within PARITY of a step, where float32 may read the score either side."""
    if calibration["kind"] != "isotonic":
        return np.ones(len(score), dtype=bool)
    steps = np.asarray(calibration["thresholds"][1:], dtype=np.float64)
    if not len(steps):
        return np.ones(len(score), dtype=bool)
    above = np.searchsorted(steps, score)  # the steps either side of each score
    below, above = np.maximum(above - 1, 0), np.minimum(above, len(steps) - 1)
    nearest = np.minimum(np.abs(score - steps[below]), np.abs(score - steps[above]))
    return nearest > PARITY * np.maximum(np.abs(score), 1.0)


def top_features(
    bases: list[Any], weights: np.ndarray, margins: np.ndarray, names: list[str], k: int = 20
) -> list[dict[str, Any]]:
    """Each base model's importance shares (LightGBM gain, |coefficient| on standardised
    features), mixed by the base's part of the stacked score's spread."""
    part = weights * margins.std(axis=0)
    part = part / part.sum() if part.sum() > 0 else np.full(len(bases), 1.0 / len(bases))
    total = np.zeros(len(names))
    for base, share in zip(bases, part, strict=True):
        raw = (
            np.abs(base.coef) if isinstance(base, LinearModel) else base.feature_importance("gain")
        )
        raw = np.asarray(raw, dtype=np.float64)
        total += share * raw / raw.sum() if raw.sum() > 0 else 0.0
    top = np.argsort(-total, kind="stable")[:k]
    return [{"feature": names[i], "gain": float(total[i])} for i in top if total[i] > 0]


def main(container: Container) -> None:
    settings = settings_from(container.hyperparameters())
    frame, manifest = read_channel(container.channel("train"))
    held_out = None
    if settings["test_share"]:  # the same split as the base jobs made
        frame, held_out = holdout_split(frame, manifest, settings["test_share"])
    train = rows_of(frame, manifest)
    task = manifest["task"]
    scratch = container.base / "scratch"
    folders = load_bases(container.channel("bases"), scratch)

    bases, records, columns = [], [], []
    for folder in folders:
        record = json.loads((folder / "base.json").read_text())
        if record["features"] != manifest["features"]:
            raise JobError(f"{folder.name}: trained on other features than the train channel")
        oof = pd.read_parquet(folder / "oof.parquet").set_index("_row")
        aligned = oof.reindex(train.frame["_row"])
        margin = aligned["margin"].to_numpy()
        ident = [c for c in manifest["identifiers"] if c in oof]  # a check on the row numbers
        same = all(np.array_equal(aligned[c].to_numpy(), train.frame[c].to_numpy()) for c in ident)
        if np.isnan(margin).any() or len(oof) != len(train.frame) or not same:
            raise JobError(f"{folder.name}: out-of-fold margins do not cover the train rows")
        columns.append(margin)
        bases.append(load_base(folder))
        records.append(record)
    oof_margins = np.column_stack(columns)

    def fit(margins: np.ndarray) -> Meta:
        return fit_meta(
            task,
            margins,
            train.target,
            train.sizes,
            l2=float(settings["meta_l2"]),
            calibration=settings["calibration"],
            coverage=settings["coverage"],
            graded=train.graded,
        )

    meta = fit(oof_margins)
    evaluated, margins = train, oof_margins  # without a test split: out-of-fold
    if held_out is None and (container.base / "input" / "data" / "test").is_dir():
        held_out = read_channel(container.channel("test"))[0]
    if held_out is not None:
        evaluated = rows_of(held_out, manifest)
        margins = base_margins(bases, evaluated.features)

    names = ["stack"] + [f"base_{i}_{r['model']}" for i, r in enumerate(records)]
    metrics, curves, probabilities = {}, {}, {}
    for i, name in enumerate(names):
        # Each base alone gets its own calibration fitted out of fold, for a fair comparison.
        chosen = meta if i == 0 else fit(oof_margins[:, [i - 1]])
        metrics[name], outputs = evaluate(
            task, chosen, margins if i == 0 else margins[:, [i - 1]], evaluated
        )
        probability = outputs.get("win_probability", outputs.get("probability"))
        if probability is not None:
            probabilities[name] = probability
            counted = decided_rows(evaluated)
            curves[name] = reliability(probability[counted], evaluated.target[counted])
    for metric, value in metrics["stack"].items():
        emit_metric(metric.replace("@", "_at_"), value)

    odds_column = manifest.get("odds")
    roi = None
    if odds_column and task != "regression" and odds_column in evaluated.frame:
        order, sizes = in_time_order(evaluated, manifest)
        odds = evaluated.frame[odds_column].to_numpy(dtype=np.float64)[order]
        roi = betting(
            probabilities["stack"][order],
            odds,
            evaluated.target[order],
            sizes,
            margin=float(settings["bet_margin"]),
            kelly_fraction=float(settings["kelly_fraction"]),
            void_without_winner=task == "ranking",
        )

    outputs = ["score", "margins"] + {
        "ranking": [],
        "binary": ["probability"],
        "regression": ["value", "lower", "upper"],
    }[task]
    model = stack_to_onnx(
        bases, meta.weights.tolist(), meta.bias, len(manifest["features"]), meta.calibration
    )
    model_bytes = model.SerializeToString()
    # The graph holds the bases refit on all rows: out of fold, their margins are not it.
    native = margins if held_out is not None else base_margins(bases, evaluated.features)
    parity = check_parity(model_bytes, meta, native, evaluated, outputs)
    emit_metric("onnx_parity_max_abs", max(parity.values()))  # relative where above 1

    out = container.model_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(model_bytes)
    files = []
    for i, base in enumerate(bases):
        if isinstance(base, LinearModel):
            files.append(f"base_{i}.json")
            base.save(out / files[-1])
        else:
            files.append(f"base_{i}.txt")
            base.save_model(str(out / files[-1]))
            # The trees as JSON, which the serving side explains without LightGBM.
            (out / f"base_{i}.trees.json").write_text(json.dumps(base.dump_model()))
    importance = top_features(bases, meta.weights, oof_margins, manifest["features"])
    artifact = {
        "task": task,
        "features": manifest["features"],
        "onnx_input": "features",
        "onnx_outputs": outputs,
        "group": manifest["group"],
        "identifiers": manifest["identifiers"],
        "dataset": manifest.get("dataset"),
        "target": manifest["target"],
        "base_models": [
            {
                "model": r["model"],
                "weight": float(w),
                "file": f,
                "kind": "linear" if f.endswith(".json") else "lightgbm",
                "explain": f if f.endswith(".json") else f.replace(".txt", ".trees.json"),
            }
            for r, w, f in zip(records, meta.weights, files, strict=True)
        ],
        "meta": {"bias": meta.bias, "calibration": meta.calibration},
        "metrics": metrics,
        "betting": roi,
        "onnx_parity": parity,
        "evaluated_on": "test" if evaluated is not train else "out-of-fold",
        "rows": {"train": len(train.frame), "evaluated": len(evaluated.frame)},
        "data_version": settings["data_version"],
        "run_id": settings["run_id"],
        "code_version": settings["code_version"],
        "feature_spec_hash": manifest.get("spec_hash"),
        # Explanations: the stacked score is bias + sum of weight x base margin, and each
        # base margin splits exactly into per-feature terms (TreeSHAP, or linear terms).
        "explain": {"method": "meta weights x (TreeSHAP | linear terms) of each base"},
        "top_features": importance,
    }
    # A metric with no value on these rows (AUC of one class, R² of a constant) is null:
    # JSON has no NaN, and Postgres' json type refuses the token.
    manifest_text = json.dumps(finite(artifact), indent=2, sort_keys=True, allow_nan=False)
    (out / "manifest.json").write_text(manifest_text)
    (out / "report.html").write_text(render_report(report_of(artifact, curves, metrics)))
    shutil.rmtree(scratch, ignore_errors=True)


def finite(value: Any) -> Any:
    """The value with every NaN or infinity inside it replaced by None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def report_of(
    artifact: dict[str, Any], curves: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    ndcg = {
        name: {k.split("@")[1]: v for k, v in values.items() if k.startswith("ndcg@")}
        for name, values in metrics.items()
    }
    facts = {
        "run id": artifact["run_id"] or "–",
        "data version": artifact["data_version"] or "–",
        "code version": artifact["code_version"] or "–",
        "rows trained on": artifact["rows"]["train"],
        f"rows evaluated ({artifact['evaluated_on']})": artifact["rows"]["evaluated"],
        "ONNX parity (max relative gap)": f"{max(artifact['onnx_parity'].values()):.2e}",
    }
    if "coverage" in artifact["meta"]["calibration"]:
        facts["nominal_coverage"] = artifact["meta"]["calibration"]["coverage"]
    report: dict[str, Any] = {
        "title": f"gallop model {artifact['run_id'] or ''} ({artifact['task']})".replace("  ", " "),
        "task": artifact["task"],
        "facts": facts,
        "metrics": metrics,
        "calibration": curves,
        "weights": [{"model": b["model"], "weight": b["weight"]} for b in artifact["base_models"]],
        "importance": artifact["top_features"],
    }
    if artifact["task"] == "ranking":
        report["ndcg"] = ndcg
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


if __name__ == "__main__":
    run(main)
