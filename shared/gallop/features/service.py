"""Compute the features of a VALID dataset version and store them, or say why not.

Output goes to features/{dataset}/{version}/{spec_hash}/: features.parquet (float32),
state.npz (the entity snapshot for race cards) and manifest.json (names, order,
dtypes, reference statistics). The feature set exists for readers once its row in
feature_sets commits as READY; a failure commits FAILED with the reason instead, and
whatever objects a crash left behind are never pointed at.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine

from gallop.features.build import build_features
from gallop.features.plan import FeatureSpecError
from gallop.features.state import SNAPSHOT
from gallop.ingest.canonical import to_parquet
from gallop.metadata import repo
from gallop.metadata.models import FeatureSet, FeatureStatus, VersionStatus
from gallop.storage import Store, features_prefix


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
    dataset = repo.get_dataset(engine, request.dataset)
    spec = repo.spec_of(dataset)
    existing = repo.find_feature_set(engine, dataset, request.version_id, spec.spec_hash)
    if existing is not None:  # the same request again
        return existing
    version = repo.find_version(engine, dataset, request.version_id)
    if version is None or version.status != VersionStatus.VALID.value or not version.data_key:
        raise VersionNotValid(f"{request.dataset} {request.version_id} is not a VALID version")

    canonical = pd.read_parquet(io.BytesIO(store.get_bytes(version.data_key)))
    try:
        built = build_features(canonical, spec)
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
    keys = {name: prefix + name for name in ("features.parquet", SNAPSHOT, "manifest.json")}
    store.put_bytes(
        keys["features.parquet"], to_parquet(built.frame), "application/vnd.apache.parquet"
    )
    store.put_bytes(keys[SNAPSHOT], built.state.to_bytes(), "application/octet-stream")
    store.put_json(
        keys["manifest.json"],
        {**built.manifest, "dataset": dataset.name, "version_id": request.version_id, "keys": keys},
    )
    return repo.record_feature_set(
        engine,
        dataset,
        version_id=request.version_id,
        spec_hash=spec.spec_hash,
        status=FeatureStatus.READY.value,
        data_key=keys["features.parquet"],
        manifest_key=keys["manifest.json"],
        state_key=keys[SNAPSHOT],
        row_count=len(built.frame),
        features=built.plan.features,
    )
