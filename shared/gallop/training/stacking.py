"""The stack job's work: the bases' margins lined up, the meta-learner chosen, the stack
and each base judged on the held-out rows, the served stack refitted on every row and
exported as one ONNX graph checked against the native stack.

Judged (held out): the meta-learner chosen on the training rows' out-of-fold margins,
applied to the margins that models fitted without the held-out rows give them.
Served: the same candidate fitted again on the out-of-fold margins of every row, over
the bases fitted on every row. The report says which rows each figure rests on.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from gallop.layout import BASE_RECORD_FILE, MARGINS_FILE
from gallop.manifests import FeatureManifest, base_metrics_key
from gallop.models.catalogue import MissingExtra, family_class
from gallop.models.lightgbm import LightGBMBase
from gallop.models.linear import LinearModel
from gallop.models.meta import Selection, fit_candidate, select_meta
from gallop.models.onnx_export import stack_to_onnx
from gallop.models.stack import Meta, group_starts
from gallop.models.treebag import TreeBag
from gallop.monitoring.status import lower_is_better
from gallop.paired import METRICS, aggregate, difference, ranking_values, row_values
from gallop.training.contract import JobError
from gallop.training.jobdata import JobData
from gallop.training.metrics import (
    betting,
    binary_metrics,
    ranking_metrics,
    regression_metrics,
    reliability,
)
from gallop.training.rows import Rows

PARITY = 1e-5
IMPORTANCE_ROWS = 2000  # held-out rows explained for the importance chart


@dataclass
class Base:
    name: str  # the kind, e.g. lambdarank
    record: dict[str, Any]  # its base.json
    model: LightGBMBase | LinearModel | TreeBag  # fitted on every row (the served one)
    margins: dict[str, np.ndarray]  # part -> margins, rows in the job data's order


def load_bases(channel: Path, scratch: Path, data: JobData) -> list[Base]:
    for archive in sorted(channel.rglob("*.tar.gz")):  # SageMaker hands over model.tar.gz
        target = scratch / archive.parent.relative_to(channel)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    found = {
        p.parent.relative_to(root): p.parent
        for root in (channel, scratch)
        if root.exists()
        for p in root.rglob(BASE_RECORD_FILE)
    }
    if not found:
        raise JobError("the bases channel holds no base job output (base.json)")
    return [load_base(found[name], data) for name in sorted(found)]


def load_base(folder: Path, data: JobData) -> Base:
    record = json.loads((folder / BASE_RECORD_FILE).read_text())
    if record["features"] != data.manifest["features"]:
        raise JobError(f"{folder.name}: trained on other features than the train channel")
    table = pd.read_parquet(folder / MARGINS_FILE)
    parts = {"evaluation": data.train, "held_out": data.test, "final": data.everything}
    margins = {}
    for part, rows in parts.items():
        if rows is None:
            continue
        if not (table["part"] == part).any():
            raise JobError(
                f"{folder.name}: the base job held no rows out ({part} margins missing); give "
                "the base and stack jobs the same test channel or test_share"
            )
        margins[part] = _aligned(table[table["part"] == part], rows, f"{folder.name} ({part})")
    try:
        family = family_class(record.get("family", "lightgbm"))
    except MissingExtra as exc:
        raise JobError(f"{folder.name}: {exc}") from None
    return Base(record["model"], record, family.load(folder), margins)


def _aligned(table: pd.DataFrame, rows: Rows, what: str) -> np.ndarray:
    """The margins in the rows' order, refused unless they are exactly these rows."""
    table = table.sort_values("position", kind="mergesort")
    same = len(table) == len(rows) and np.array_equal(table["position"], np.arange(len(rows)))
    if same:
        for column in rows.identifiers().columns:
            if column in table:
                same &= _same_values(table[column], rows.frame[column])
    margin = table["margin"].to_numpy(dtype=np.float64)
    if not same or np.isnan(margin).any():
        raise JobError(f"{what}: out-of-fold margins do not cover the train rows")
    return margin


def _same_values(stored: pd.Series, expected: pd.Series) -> bool:
    """Equal value by value. As text only when the types differ: formatting 100,000
    timestamps as text took longer than the meta-learner's whole selection."""
    stored, expected = stored.reset_index(drop=True), expected.reset_index(drop=True)
    if stored.dtype == expected.dtype:
        return bool(stored.equals(expected))
    return bool(np.array_equal(stored.astype(str).to_numpy(), expected.astype(str).to_numpy()))


def column(bases: list[Base], part: str) -> np.ndarray:
    return np.column_stack([b.margins[part] for b in bases])


def evaluate(
    meta: Meta, margins: np.ndarray, rows: Rows
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    score = meta.score(margins)
    outputs = meta.outputs(score, rows.sizes)
    if rows.task == "ranking":
        assert rows.sizes is not None
        probability = outputs["win_probability"]
        return ranking_metrics(score, probability, rows.relevance, rows.share, rows.sizes), outputs
    if rows.task == "binary":
        return binary_metrics(outputs["probability"], rows.target), outputs
    return regression_metrics(
        outputs["value"], rows.target, outputs["lower"], outputs["upper"]
    ), outputs


def decided(rows: Rows) -> np.ndarray:
    """Rows that say something about calibration: all, but for races with no winner."""
    if rows.sizes is None:
        return np.ones(len(rows), dtype=bool)
    return np.repeat(np.add.reduceat(rows.share, group_starts(rows.sizes)) > 0, rows.sizes)


@dataclass
class Judged:
    metrics: dict[str, dict[str, float]]  # stack and each base, on the judged rows
    curves: dict[str, Any]
    # stack and each base: its main output per judged row (a win probability, a
    # probability or a value), for the betting run and for paired comparisons
    predictions: dict[str, np.ndarray]
    selection: Selection
    rows: Rows  # the rows judged on
    held_out: bool


def judge(bases: list[Base], data: JobData, settings: dict[str, Any]) -> Judged:
    """The stack and each base alone (with its own calibration fitted out of fold, for a
    fair comparison) on the held-out rows, or out of fold without them."""
    names = [b.name for b in bases]
    oof = column(bases, "evaluation")
    target = data.train.meta_target()
    selection = select_meta(oof, target, settings, names)
    held = data.test is not None
    rows = data.test if data.test is not None else data.train
    margins = column(bases, "held_out") if held else oof
    metrics, curves, predictions = {}, {}, {}
    singles = [fit_candidate("base:0", oof[:, [i]], target, settings) for i in range(len(names))]
    for i, (name, meta) in enumerate(
        zip(["stack", *names], [selection.meta, *singles], strict=True)
    ):
        part = margins if i == 0 else margins[:, [i - 1]]
        key = name if i == 0 else base_metrics_key(i - 1, name)
        metrics[key], outputs = evaluate(meta, part, rows)
        probability = outputs.get("win_probability", outputs.get("probability"))
        predictions[key] = outputs["value"] if probability is None else probability
        if probability is not None:
            counted = decided(rows)
            curves[key] = reliability(probability[counted], rows.share[counted])
    return Judged(metrics, curves, predictions, selection, rows, held)


# The budgets' rule for "no worse": the stack is not below a base on a metric unless the
# 95 % paired-bootstrap interval of its advantage lies wholly below zero (on a few
# hundred races a point figure alone is noise).
NOT_BELOW_RULE = (
    "For each metric, the base best on the judged rows; the stack is not below it unless "
    "the 95 % paired-bootstrap interval of its advantage (positive: the stack is better) "
    "lies wholly below zero."
)


def against_best_base(judged: Judged) -> dict[str, Any]:
    """The stack against its best base on each of the task's metrics (the base best on
    that metric, on the judged rows), race by race (row by row without groups), with the
    95 % paired-bootstrap interval of the stack's advantage."""
    rows, task = judged.rows, judged.rows.task
    values = {name: unit_values(rows, p) for name, p in judged.predictions.items()}
    bases = [name for name in values if name != "stack"]
    compared = []
    for metric in METRICS[task]:
        sign = 1.0 if lower_is_better(metric) else -1.0
        levels = {b: sign * aggregate(metric, values[b][metric]) for b in bases}
        ranked = [b for b in bases if np.isfinite(levels[b])]
        if not ranked:
            continue
        best = min(ranked, key=levels.__getitem__)
        d = difference(metric, values[best][metric], values["stack"][metric])
        compared.append(
            {
                "metric": metric,
                "base": best,
                "units": d.races,
                "stack": d.challenger,
                "best_base": d.champion,
                "advantage": d.difference,
                "low": d.low,
                "high": d.high,
                "not_below": bool(d.high >= 0),
            }
        )
    return {
        "rule": NOT_BELOW_RULE,
        "unit": "race" if rows.sizes is not None else "row",
        "metrics": compared,
        "not_below": all(m["not_below"] for m in compared),
    }


def unit_values(rows: Rows, output: np.ndarray) -> dict[str, np.ndarray]:
    """Each race's (or, without groups, each row's) metrics of a model's main output."""
    sizes = rows.sizes
    if rows.task == "ranking":
        assert sizes is not None
        return ranking_values(output, output, rows.share, rows.relevance, sizes)
    values = row_values(rows.task, rows.target, output)
    if sizes is None:
        return values
    starts = group_starts(sizes)
    return {k: np.add.reduceat(v, starts) / sizes for k, v in values.items()}


def served_meta(
    bases: list[Base], data: JobData, judged: Judged, settings: dict[str, Any]
) -> Selection:
    """The served stack's meta-learner: the candidate chosen and judged on the held-out
    rows, fitted again on every row's out-of-fold margins (choosing again on them could
    serve a candidate no held-out figure speaks for, and took half the stack job)."""
    if data.everything is None:
        return judged.selection
    final = column(bases, "final")
    return judged.selection.refitted(final, data.everything.meta_target(), settings)


def betting_of(judged: Judged, manifest: FeatureManifest, settings: dict[str, Any]) -> Any:
    rows, task = judged.rows, manifest["task"]
    odds_column = manifest.get("odds")
    if not odds_column or task == "regression" or odds_column not in rows.frame:
        return None
    order, sizes = in_time_order(rows, manifest)
    odds = rows.frame[odds_column].to_numpy(dtype=np.float64)[order]
    return betting(
        judged.predictions["stack"][order],
        odds,
        rows.share[order],
        sizes,
        margin=float(settings["bet_margin"]),
        kelly_fraction=float(settings["kelly_fraction"]),
        void_without_winner=task == "ranking",
    )


def in_time_order(rows: Rows, manifest: FeatureManifest) -> tuple[np.ndarray, np.ndarray]:
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


def graph_outputs(task: str) -> list[str]:
    return ["score", "margins"] + {
        "ranking": [],
        "binary": ["probability"],
        "regression": ["value", "lower", "upper"],
    }[task]


def served_parts(bases: list[Base], meta: Meta) -> tuple[list[Base], Meta]:
    """Bases the served stack gives no weight are left out of the graph: they would only
    cost time on every prediction."""
    kept = [i for i, w in enumerate(meta.weights) if w != 0.0] or [int(np.argmax(meta.weights))]
    return [bases[i] for i in kept], Meta(meta.weights[kept], meta.bias, meta.calibration)


def export(bases: list[Base], meta: Meta, n_features: int) -> bytes:
    model = stack_to_onnx(
        [b.model for b in bases], meta.weights.tolist(), meta.bias, n_features, meta.calibration
    )
    return model.SerializeToString()


def check_parity(
    model_bytes: bytes, meta: Meta, margins: np.ndarray, rows: Rows, outputs: list[str]
) -> dict[str, float]:
    """The graph against the native stack on the given rows: score and margins within
    PARITY (relative to the value where it exceeds 1), and the same order within every
    race for runners whose native scores are more than PARITY apart (closer ones may
    swap within float32's summing error without the graph being wrong), and the
    calibrated outputs within PARITY too (relative to what they are made from)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = dict(zip(outputs, session.run(outputs, {"features": rows.features}), strict=True))
    native = meta.score(margins)

    def gap(exported: np.ndarray, expected: np.ndarray, scale: Any = 1.0) -> float:
        if not len(expected):
            return 0.0
        relative = np.maximum(np.abs(expected), scale)
        return float((np.abs(exported - expected) / relative).max())

    gaps = {"score": gap(got["score"][:, 0], native), "margins": gap(got["margins"], margins)}
    if max(gaps.values()) > PARITY:
        raise JobError(
            f"ONNX differs from the native stack by {max(gaps.values()):.2e} (> {PARITY})"
        )
    if rows.sizes is not None:
        race = rows.group_index
        order = np.lexsort((-native, race))  # native order, race by race
        ahead, behind = order[:-1], order[1:]
        apart = native[ahead] - native[behind] > PARITY * np.maximum(np.abs(native[ahead]), 1.0)
        swapped = got["score"][ahead, 0] <= got["score"][behind, 0]
        if (apart & swapped & (race[ahead] == race[behind])).any():
            raise JobError("ONNX orders the runners of some race differently from the native stack")
    calibrated = meta.outputs(native, rows.sizes)
    settled = away_from_steps(native, meta.calibration)
    # A calibrated output is made in float32 from the score (and an interval's half
    # width): it is as exact as they are. score - half width near 0 cancels two large
    # numbers, so its own size cannot be the measure (diabetes: 1.5e-5 of a lower bound
    # near 0, from a score and half width near 90).
    half_width = abs(float(meta.calibration.get("half_width", 0.0)))
    scale = np.maximum(np.maximum(np.abs(native[settled]), half_width), 1.0)
    for name in outputs[2:]:
        exported, expected = got[name][settled, 0], calibrated[name][settled]
        gaps[name] = gap(exported, expected, scale) if settled.any() else 0.0
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


def importance(bases: list[Base], meta: Meta, rows: Rows, k: int = 20) -> list[dict[str, Any]]:
    """Mean |part| of each feature in the served stack's score, over (up to
    IMPORTANCE_ROWS of) the judged rows: what the explanations say, on average."""
    features = rows.features[:: max(1, len(rows) // IMPORTANCE_ROWS)][:IMPORTANCE_ROWS]
    total = np.zeros(features.shape)
    for base, weight in zip(bases, meta.weights, strict=True):
        if weight:
            total += weight * base.model.contributions(features)
    mean_abs = np.abs(total).mean(axis=0) if len(features) else np.zeros(features.shape[1])
    names = rows.manifest["features"]
    top = np.argsort(-mean_abs, kind="stable")[:k]
    return [
        {"feature": names[i], "mean_abs_shap": float(mean_abs[i])} for i in top if mean_abs[i] > 0
    ]
