"""What a crash of the local stack can leave half-done, mended when it starts again.

Objects reach disk before metadata names them (gallop.local.s3_front), but a state
directory written before that, or a message that died with the process (moto keeps no
queue across restarts), can leave: a VALID version or a READY feature set whose objects
are gone, a VALID version whose features were never built, a registered model whose
files are gone, an online snapshot pointer not moved to the newest READY feature set.
Each is unmade so that it is made again: the version's uploads are ingested again, the
features are asked for, the run can be posted again and trains, the pointer is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from gallop.features.parts import part_keys
from gallop.features.pointer import publish
from gallop.features.service import FeaturesRequest
from gallop.layout import MANIFEST_FILE, curated_prefix
from gallop.metadata import repo
from gallop.metadata.models import FeatureSet, FeatureStatus, VersionStatus
from gallop.serving import registry
from gallop.storage import ObjectMissing, Store
from gallop.training import runs

log = logging.getLogger(__name__)

MODEL_LOST = "its model's files were lost ({problem}): POST the run again to train it again"


@dataclass(frozen=True)
class Repairs:
    versions_forgotten: int = 0
    feature_sets_forgotten: int = 0
    features_requested: int = 0
    models_unregistered: int = 0


def repair(
    engine: Engine,
    data: Store,
    artifacts: Store,
    request_features: Callable[[FeaturesRequest], None],
) -> Repairs:
    versions = feature_sets = 0
    # Asked for once every lost set is forgotten: an appended version's features build
    # on its parent's set, which must not be a lost one still marked READY.
    requests: list[FeaturesRequest] = []
    for dataset in repo.list_datasets(engine):
        for version in repo.list_versions(engine, dataset):
            if version.status != VersionStatus.VALID.value:
                continue
            # An append's data is its parent's parts and its own: it needs every one.
            keys = [*(version.parts or [version.data_key or ""]), version.report_key or ""]
            if _missing(
                data, [*keys, curated_prefix(dataset.name, version.version_id) + MANIFEST_FILE]
            ):
                log.warning(
                    "version %s of %s lost its objects: ingesting it again",
                    version.version_id,
                    dataset.name,
                )
                repo.forget_version(engine, version)
                versions += 1
                continue
            current = repo.find_feature_set(engine, dataset, version.version_id, dataset.spec_hash)
            if current is not None and _lost(data, current):
                repo.forget_feature_set(engine, current)
                feature_sets += 1
                current = None
            if current is None:
                requests.append(FeaturesRequest(dataset.name, version.version_id))
        # A crash between a feature set's READY commit and its pointer's write would leave
        # race cards on the snapshot before: point them at the newest READY one again.
        publish(data, engine, dataset.name, dataset.spec_hash)
    for request in requests:
        request_features(request)
    return Repairs(
        versions, feature_sets, len(requests), _unregister_lost_models(engine, artifacts)
    )


def _lost(data: Store, feature_set: FeatureSet) -> bool:
    if feature_set.status != FeatureStatus.READY.value:
        return False
    keys = [feature_set.data_key, feature_set.manifest_key, feature_set.state_key]
    if _missing(data, [key or "" for key in keys]):
        return True
    # An appended version's rows are also in its parent's parts: each must be there.
    assert feature_set.manifest_key and feature_set.data_key
    try:
        manifest = json.loads(data.get_bytes(feature_set.manifest_key))
    except ObjectMissing:
        return True
    return _missing(data, part_keys(manifest, feature_set.data_key))


def _unregister_lost_models(engine: Engine, artifacts: Store) -> int:
    count = 0
    for model in registry.list_models(engine):
        others = [model.onnx_key, model.report_key, model.artifact_key]
        try:
            runs.servable_manifest(artifacts, model.run_id, model.manifest_key, others)
            continue
        except (ObjectMissing, runs.ArtifactMismatch) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        log.warning("model %s lost its files (%s): unregistered", model.model_id, problem)
        runs.unregister_model(engine, artifacts, model.run_id, MODEL_LOST.format(problem=problem))
        count += 1
    return count


def _missing(store: Store, keys: list[str]) -> bool:
    for key in keys:
        if not key:
            return True
        try:
            store.head(key)
        except ObjectMissing:
            return True
    return False
