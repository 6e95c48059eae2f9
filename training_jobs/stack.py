"""SageMaker job `stack`: the meta-learner on the base models' out-of-fold margins,
evaluation, and the whole stack exported as one ONNX graph (checked for parity).

Channels: `train` (features.parquet, manifest.json), `bases` (one folder per base job's
model/ output, or its model.tar.gz), optional `test` (held-out races, same layout as
train). Hyperparameters: l2 (meta-learner penalty, default 0.001).
Writes model/: model.onnx, manifest.json, and base_<i>.txt boosters (for explanations).
Ranking tasks only for now: binary (Platt) and regression (conformal) stacks come next.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pandas as pd

from gallop.models.onnx_export import native_margin, stack_to_onnx
from gallop.models.stack import fit_conditional_logit, softmax_within_groups
from gallop.training.contract import Container, JobError, emit_metric, run
from gallop.training.metrics import ndcg_at_k

PARITY = 1e-5


def load_frame(channel: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    manifest = json.loads((channel / "manifest.json").read_text())
    frame = pd.read_parquet(channel / "features.parquet")
    key = [c for c in (manifest["group"], manifest.get("identifiers", [None])[-1]) if c]
    return frame.sort_values(key, kind="mergesort").reset_index(drop=True), manifest


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


def race_outcomes(frame: pd.DataFrame, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    group, target = manifest["group"], manifest["target"]
    best = frame.groupby(group, sort=False)[target].transform(
        "min" if manifest["target_order"] == "ascending" else "max"
    )
    won = (frame[target] == best).to_numpy(dtype=np.float64)
    return won, frame.groupby(group, sort=False).size().to_numpy()


def evaluate(score: np.ndarray, frame: pd.DataFrame, manifest: dict[str, Any]) -> dict[str, float]:
    won, sizes = race_outcomes(frame, manifest)
    target = frame[manifest["target"]].to_numpy(dtype=np.float64)
    relevance = np.clip(4 - target, 0, None) if manifest["target_order"] == "ascending" else target
    probability = softmax_within_groups(score, sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    top = np.array(
        [s + int(np.argmax(score[s : s + n])) for s, n in zip(starts, sizes, strict=True)]
    )
    winners = np.add.reduceat(won, starts)
    share = won / np.repeat(np.maximum(winners, 1), sizes)
    metrics = {f"ndcg@{k}": ndcg_at_k(score, relevance, sizes, k) for k in (1, 3, 5, 10)}
    metrics["top1_hit_rate"] = float(won[top].mean())
    metrics["race_log_loss"] = float(
        -(share * np.log(np.maximum(probability, 1e-300))).sum() / max(int((winners > 0).sum()), 1)
    )
    metrics["race_brier"] = float(np.add.reduceat((probability - share) ** 2, starts).mean())
    return metrics


def main(container: Container) -> None:
    train, manifest = load_frame(container.channel("train"))
    if manifest["task"] != "ranking":
        raise JobError(f"stacking a {manifest['task']} task is not built yet (ranking only)")
    l2 = container.hyperparameters().get("l2", 1e-3)
    if not isinstance(l2, int | float) or l2 < 0:
        raise JobError(f"hyperparameter l2={l2!r} is not valid")
    scratch = container.base / "scratch"
    folders = load_bases(container.channel("bases"), scratch)
    ident = [c for c in manifest["identifiers"] if c != manifest.get("time")]

    margins, boosters, records = [], [], []
    for folder in folders:
        record = json.loads((folder / "base.json").read_text())
        if record["features"] != manifest["features"]:
            raise JobError(f"{folder.name}: trained on other features than the train channel")
        oof = pd.read_parquet(folder / "oof.parquet")
        aligned = train[ident].merge(oof[ident + ["margin"]], on=ident, how="left")
        if aligned["margin"].isna().any() or len(aligned) != len(train):
            raise JobError(f"{folder.name}: out-of-fold margins do not cover the train rows")
        margins.append(aligned["margin"].to_numpy())
        boosters.append(lgb.Booster(model_file=str(folder / "booster.txt")))
        records.append(record)
    oof_margins = np.column_stack(margins)
    won, sizes = race_outcomes(train, manifest)
    meta = fit_conditional_logit(oof_margins, won, sizes, l2=float(l2))
    emit_metric("oof_race_log_loss", meta.log_loss)

    evaluated, evaluation_rows = train, oof_margins  # without a test split: out-of-fold
    if (container.base / "input" / "data" / "test").is_dir():
        evaluated, _ = load_frame(container.channel("test"))
        features = evaluated[manifest["features"]].to_numpy(np.float32)
        evaluation_rows = np.column_stack([native_margin(b, features) for b in boosters])
    metrics = {"stack": evaluate(meta.score(evaluation_rows), evaluated, manifest)}
    for i, record in enumerate(records):
        # Each base alone, at its own temperature fitted out of fold, for a fair comparison.
        alone = fit_conditional_logit(oof_margins[:, [i]], won, sizes, l2=float(l2))
        score = evaluation_rows[:, i] * alone.weights[0]
        metrics[f"base_{i}_{record['model']}"] = evaluate(score, evaluated, manifest)
    for name, value in metrics["stack"].items():
        emit_metric(name, value)

    out = container.model_dir
    out.mkdir(parents=True, exist_ok=True)
    model = stack_to_onnx(boosters, meta.weights.tolist(), 0.0, len(manifest["features"]))
    features = evaluated[manifest["features"]].to_numpy(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    exported = session.run(["score"], {"features": features})[0][:, 0]
    native = np.column_stack([native_margin(b, features) for b in boosters]) @ meta.weights
    gap = float(np.abs(exported - native).max())
    emit_metric("onnx_parity_max_abs", gap)
    if gap > PARITY:
        raise JobError(f"ONNX differs from the native stack by {gap:.2e} (> {PARITY})")
    (out / "model.onnx").write_bytes(model.SerializeToString())
    for i, booster in enumerate(boosters):
        booster.save_model(str(out / f"base_{i}.txt"))
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "task": manifest["task"],
                "features": manifest["features"],
                "onnx_input": "features",
                "onnx_outputs": ["score", "margins"],
                "group": manifest["group"],
                "calibration": {"kind": "softmax_within_group", "temperature_in_weights": True},
                "base_models": [
                    {"model": r["model"], "weight": float(w), "booster": f"base_{i}.txt"}
                    for i, (r, w) in enumerate(zip(records, meta.weights, strict=True))
                ],
                "metrics": metrics,
                "onnx_parity_max_abs": gap,
                "evaluated_on": "test" if evaluated is not train else "out-of-fold",
            },
            indent=2,
            sort_keys=True,
        )
    )
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run(main)
