"""Compute the features of a VALID dataset version and store them, or say why not.

Output goes to features/{dataset}/{version}/{spec_hash}/: features.parquet (float32),
state.npz (the entity snapshot for race cards) and manifest.json (names, order,
dtypes, reference statistics). The feature set exists for readers once its row in
feature_sets commits as READY; a failure commits FAILED with the reason instead, and
whatever objects a crash left behind are never pointed at.

An appended version (one with a parent, no replaced rows) whose parent has READY
features under the same spec is built from the parent's snapshot and its own appended
rows (gallop.features.incremental): its features.parquet holds those rows only, and its
manifest's `parts` lists the parent's parts then its own (gallop.features.parts reads
them). Anything else, or an append the snapshot cannot extend exactly, is built whole
from the version's data (all its parts). The manifest's `build` says which, and why.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from gallop.features.build import FeatureSet as BuiltFeatures
from gallop.features.build import build_features
from gallop.features.incremental import NotIncremental, extend_features
from gallop.features.plan import FeatureSpecError
from gallop.features.pointer import publish
from gallop.features.state import State
from gallop.ingest.canonical import read_canonical, to_parquet
from gallop.layout import (
    FEATURES_FILE,
    MANIFEST_FILE,
    SNAPSHOT_FILE,
    appended_key,
    features_prefix,
)
from gallop.manifests import FeatureManifest, read_feature_manifest
from gallop.metadata import repo
from gallop.metadata.models import (
    Dataset,
    DatasetVersion,
    FeatureSet,
    FeatureStatus,
    VersionStatus,
)
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store

INCREMENTAL, FULL = "incremental", "full"


class VersionNotValid(LookupError):
    pass


@dataclass(frozen=True)
class FeaturesRequest:
    dataset: str
    version_id: str

    def to_json(self) -> str:
        return json.dumps({"dataset": self.dataset, "version_id": self.version_id})

    @classmethod
    def from_json(cls, body: str) -> FeaturesRequest:
        message = json.loads(body)
        return cls(str(message["dataset"]), str(message["version_id"]))


def build_for_version(request: FeaturesRequest, store: Store, engine: Engine) -> FeatureSet:
    feature_set = _build_for_version(request, store, engine)
    if feature_set.status == FeatureStatus.READY.value:  # new, or the same request again
        publish(store, engine, request.dataset, feature_set.spec_hash)
    return feature_set


def _build_for_version(request: FeaturesRequest, store: Store, engine: Engine) -> FeatureSet:
    dataset = repo.get_dataset(engine, request.dataset)
    spec = repo.spec_of(dataset)
    existing = repo.find_feature_set(engine, dataset, request.version_id, spec.spec_hash)
    if existing is not None:  # the same request again
        return existing
    version = repo.find_version(engine, dataset, request.version_id)
    if version is None or version.status != VersionStatus.VALID.value or not version.data_key:
        raise VersionNotValid(f"{request.dataset} {request.version_id} is not a VALID version")

    try:
        built, build, parts = _build(store, engine, dataset, version, spec)
    except (FeatureSpecError, ValueError, MemoryError) as exc:
        # Deterministic given the data and spec: retrying cannot help, so say why instead.
        reason = str(exc) if isinstance(exc, FeatureSpecError) else f"{type(exc).__name__}: {exc}"
        return repo.record_feature_set(
            engine,
            dataset,
            version_id=request.version_id,
            spec_hash=spec.spec_hash,
            status=FeatureStatus.FAILED.value,
            reason=reason,
        )

    prefix = features_prefix(dataset.name, request.version_id, spec.spec_hash)
    keys = {name: prefix + name for name in (FEATURES_FILE, SNAPSHOT_FILE, MANIFEST_FILE)}
    own, parts = _merge_small_parts(store, parts, built.frame)
    store.put_bytes(keys[FEATURES_FILE], to_parquet(own), "application/vnd.apache.parquet")
    store.put_bytes(keys[SNAPSHOT_FILE], built.state.to_bytes(), "application/octet-stream")
    stored = built.manifest.copy()
    stored["dataset"], stored["version_id"], stored["keys"] = dataset.name, request.version_id, keys
    stored["parts"] = [*parts, {"key": keys[FEATURES_FILE], "rows": len(own)}]
    stored["build"] = build
    store.put_json(keys[MANIFEST_FILE], stored)
    return repo.record_feature_set(
        engine,
        dataset,
        version_id=request.version_id,
        spec_hash=spec.spec_hash,
        status=FeatureStatus.READY.value,
        data_key=keys[FEATURES_FILE],
        manifest_key=keys[MANIFEST_FILE],
        state_key=keys[SNAPSHOT_FILE],
        row_count=stored["rows"],
        features=built.plan.features,
        build=build,
    )


def _build(
    store: Store, engine: Engine, dataset: Dataset, version: DatasetVersion, spec: DatasetSpec
) -> tuple[BuiltFeatures, dict[str, Any], list[dict[str, Any]]]:
    """The features (all rows, or the appended rows on top of the parent's parts), how
    they were built, and the parent's parts they follow (none for a full build)."""
    parent_id = version.parent_version_id
    try:
        parent_state, parent_manifest = _parent_snapshot(store, engine, dataset, version, spec)
        appended = pd.read_parquet(
            io.BytesIO(store.get_bytes(appended_key(dataset.name, version.version_id)))
        )
        built = extend_features(parent_state, parent_manifest, appended, spec)
        build = {"kind": INCREMENTAL, "parent_version_id": parent_id, "reason": None}
        return built, build, _parts_of(parent_manifest)
    except NotIncremental as exc:
        reason = str(exc)
    except ObjectMissing as exc:
        reason = f"an object the append builds on is missing: {exc}"
    except ValueError as exc:  # an unreadable append file, say: the whole decides
        reason = f"the append cannot extend the snapshot: {type(exc).__name__}: {exc}"
    assert version.data_key  # a VALID version always has one
    canonical = read_canonical(store.get_bytes, version.parts or [version.data_key], spec)
    built = build_features(canonical, spec)
    return built, {"kind": FULL, "parent_version_id": parent_id, "reason": reason}, []


def _parent_snapshot(
    store: Store, engine: Engine, dataset: Dataset, version: DatasetVersion, spec: DatasetSpec
) -> tuple[State, FeatureManifest]:
    if not version.parent_version_id:
        raise NotIncremental("not an append: the version has no parent")
    if version.rows_replaced:
        raise NotIncremental(f"corrections replaced {version.rows_replaced} stored row(s)")
    parent = repo.find_feature_set(engine, dataset, version.parent_version_id, spec.spec_hash)
    if parent is None or parent.status != FeatureStatus.READY.value:
        raise NotIncremental("the parent version has no READY features under this spec")
    assert parent.manifest_key and parent.state_key and parent.data_key
    manifest = read_feature_manifest(json.loads(store.get_bytes(parent.manifest_key)))
    manifest.setdefault("parts", [{"key": parent.data_key, "rows": manifest["rows"]}])
    try:
        state = State.from_bytes(store.get_bytes(parent.state_key))
    except (ValueError, KeyError) as exc:  # a format this code does not read
        raise NotIncremental(f"the parent's snapshot cannot be read: {exc}") from exc
    return state, manifest


def _parts_of(manifest: FeatureManifest) -> list[dict[str, Any]]:
    return list(manifest.get("parts", []))


def _merge_small_parts(
    store: Store, parts: list[dict[str, Any]], rows: pd.DataFrame
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """This version's own part, and the parts before it. Its rows take in each last part
    up to twice their size, so each part is more than twice the next: a year of daily
    appends is a handful of parts (log2 of the appended rows over a day's), not hundreds
    for training to read, and each row is rewritten a few times in all. A full build's
    part is merged only once the appends since reach half of it."""
    merged = [rows]
    count = len(rows)
    parts = list(parts)
    while parts and int(parts[-1]["rows"]) <= 2 * count:
        part = parts.pop()
        merged.insert(0, pd.read_parquet(io.BytesIO(store.get_bytes(str(part["key"])))))
        count += int(part["rows"])
    own = merged[0] if len(merged) == 1 else pd.concat(merged, ignore_index=True)
    return own, parts
