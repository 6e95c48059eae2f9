"""Offline features: canonical data in, float32 feature table, manifest and snapshot out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gallop.features.categories import Counts, count_categories, encode, vocabulary_of_counts
from gallop.features.engine import Table, compute
from gallop.features.plan import FeatureSpecError, Plan, build_plan
from gallop.features.roles import roles_for
from gallop.features.state import State
from gallop.manifests import FeatureManifest
from gallop.spec import DatasetSpec

REFERENCE_BINS = 10


@dataclass
class FeatureSet:
    frame: pd.DataFrame  # identifying columns, target, then the features (float32)
    plan: Plan
    state: State
    manifest: FeatureManifest


def build_features(canonical: pd.DataFrame, spec: DatasetSpec) -> FeatureSet:
    numeric = [c for c in canonical.columns if canonical[c].dtype.kind == "f" and c != spec.target]
    plan = build_plan(spec, numeric)
    missing = [c for c in plan.numeric_inputs + plan.text_keys if c not in canonical.columns]
    if missing:
        raise FeatureSpecError(f"columns {missing} are not in the data")
    table = table_from_frame(canonical, spec, plan)
    outputs, state = compute(table, plan, roles_for(spec), None)
    times = table[spec.time] if spec.time else None
    counts = {name: count_categories(table[name], times) for name in plan.categorical}
    vocabularies = {name: vocabulary_of_counts(*counts[name]) for name in plan.categorical}
    for name, vocabulary in vocabularies.items():
        outputs[name] = encode(table[name], vocabulary)

    frame = feature_frame(canonical, outputs, spec, plan)
    data_end = int(table[spec.time].max()) if spec.time and len(canonical) else None
    state.meta = snapshot_meta(spec, plan, numeric, data_end, vocabularies, counts)
    manifest = feature_manifest(
        spec, plan, state, rows=len(frame), reference=reference_statistics(frame[plan.features])
    )
    return FeatureSet(frame, plan, state, manifest)


def feature_frame(
    canonical: pd.DataFrame, outputs: Table, spec: DatasetSpec, plan: Plan
) -> pd.DataFrame:
    """Identifying columns, the target (and the odds), then the features as float32."""
    frame = canonical[identifiers(spec) + [spec.target]].copy()
    if spec.odds and spec.odds not in plan.features:
        frame[spec.odds] = canonical[spec.odds]
    features = pd.DataFrame({name: outputs[name].astype(np.float32) for name in plan.features})
    return pd.concat([frame.reset_index(drop=True), features], axis=1)


def identifiers(spec: DatasetSpec) -> list[str]:
    return [c for c in (spec.group, spec.time, spec.entity) if c]


def snapshot_meta(
    spec: DatasetSpec,
    plan: Plan,
    numeric: list[str],
    data_end: int | None,
    vocabularies: dict[str, list[str]],
    counts: dict[str, Counts],
) -> dict[str, Any]:
    """What a snapshot says of the data it is the end of. `category_counts` (each
    categorical column's distinct texts, their row counts and first times) lets an append
    learn the vocabulary of the whole exactly (gallop.features.incremental)."""
    return {
        "spec": spec.model_dump(mode="json"),
        "spec_hash": plan.spec_hash,
        "features": plan.features,
        "data_numeric": numeric,
        "data_end": data_end,
        "categories": vocabularies,
        "category_counts": {
            name: {
                "values": [str(v) for v in values],
                "counts": [int(c) for c in tally],
                "first": [int(t) for t in first],
            }
            for name, (values, tally, first) in counts.items()
        },
    }


def feature_manifest(
    spec: DatasetSpec, plan: Plan, state: State, *, rows: int, reference: dict[str, Any]
) -> FeatureManifest:
    data_end = state.meta["data_end"]
    return {
        "dataset": spec.name,
        "spec_hash": plan.spec_hash,
        "features": plan.features,
        "dtypes": {name: "float32" for name in plan.features},
        # Categorical features' vocabularies: a feature's value is its text's place here.
        "categorical": state.meta["categories"],
        "rows": rows,
        "identifiers": identifiers(spec),
        "task": spec.task.value,
        "target_order": spec.target_order.value if spec.target_order else None,
        "group": spec.group,
        "time": spec.time,
        "target": spec.target,
        "odds": spec.odds,
        "post_race": sorted(plan.post_race),
        "data_end": pd.Timestamp(data_end, unit="us", tz="UTC").isoformat()
        if data_end is not None
        else None,
        "entities": {name: key.entities for name, key in state.keys.items()},
        "reference": reference,
    }


def table_from_frame(frame: pd.DataFrame, spec: DatasetSpec, plan: Plan) -> Table:
    """The engine's columns: time as int64 microseconds (UTC), keys as text ("" when
    missing), numbers as float64 (exact copies of the stored float32 values)."""
    table: Table = {}
    if spec.time:
        times = pd.to_datetime(frame[spec.time], utc=True).astype("datetime64[us, UTC]")
        table[spec.time] = times.astype("int64").to_numpy()
    for key in {spec.group, *plan.text_keys} - {None}:
        table[key] = frame[key].astype("string").fillna("").to_numpy(dtype=str)  # type: ignore[index]
    for name in {spec.target, *plan.numeric_inputs}:
        table[name] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    return table


def reference_statistics(features: pd.DataFrame) -> dict[str, Any]:
    """Per feature: decile bin edges and counts, missing count, min/mean/max — the
    reference a drift check compares live inputs against."""
    stats: dict[str, Any] = {}
    for name in features.columns:
        values = features[name].to_numpy(dtype=np.float64)
        present = values[~np.isnan(values)]
        entry: dict[str, Any] = {"missing": int(len(values) - len(present))}
        if len(present):
            edges = np.unique(np.quantile(present, np.linspace(0, 1, REFERENCE_BINS + 1)))
            counts = np.histogram(present, bins=edges)[0] if len(edges) > 1 else [len(present)]
            entry.update(
                edges=[float(e) for e in edges],
                counts=[int(c) for c in counts],
                min=float(present.min()),
                mean=float(present.mean()),
                max=float(present.max()),
            )
        stats[name] = entry
    return stats
