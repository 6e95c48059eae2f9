"""The features service on appended versions (moto S3, SQLite): built from the parent's
snapshot when that is exact, whole otherwise, and read the same either way."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from sqlalchemy import Engine

from gallop.features.build import build_features
from gallop.features.parts import part_keys, read_rows
from gallop.features.service import FeaturesRequest, build_for_version
from gallop.features.state import State
from gallop.ingest.canonical import content_hash, to_parquet, version_id_for
from gallop.layout import (
    DATA_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    RawKey,
    appended_key,
    curated_prefix,
)
from gallop.local.repair import repair
from gallop.manifests import read_feature_manifest
from gallop.metadata import repo
from gallop.metadata.db import engine_for, migrate
from gallop.metadata.models import Dataset, FeatureStatus, TrainingRun, VersionStatus
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.channels import load_run_data
from tests.conftest import spec_named, unique_name
from tests.unit.test_incremental import (
    assert_same_features,
    assert_same_state,
    canonical,
    expected_reason,
)

BUCKET = "gallop-data-incremental"


@dataclass
class Service:
    engine: Engine
    store: Store


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        engine = engine_for(f"sqlite:///{tmp_path / 'meta.db'}")
        migrate(engine)
        yield Service(engine, Store(BUCKET, s3))


def store_version(
    service: Service,
    dataset: Dataset,
    spec: DatasetSpec,
    whole: pd.DataFrame,
    appended: pd.DataFrame | None = None,
    parent: str | None = None,
    replaced: int = 0,
) -> str:
    """A VALID version as ingestion stores it: its whole data, an append's own rows beside
    it, and its row in the metadata with its lineage."""
    version_id = version_id_for(content_hash(whole, spec), True)
    prefix = curated_prefix(dataset.name, version_id)
    service.store.put_bytes(prefix + DATA_FILE, to_parquet(whole), "application/octet-stream")
    service.store.put_json(prefix + REPORT_FILE, {})
    service.store.put_json(prefix + MANIFEST_FILE, {"parent_version_id": parent})
    if appended is not None:
        service.store.put_bytes(
            appended_key(dataset.name, version_id), to_parquet(appended), "application/octet-stream"
        )
    repo.record_version(
        service.engine,
        dataset,
        uuid.uuid4().hex,
        "etag",
        version_id=version_id,
        status=VersionStatus.VALID.value,
        content_hash=version_id,
        row_count=len(whole),
        source_key=RawKey.for_upload(dataset.name, "upload", "races.csv").key,
        data_key=prefix + DATA_FILE,
        report_key=prefix + REPORT_FILE,
        report={},
        parent_version_id=parent,
        rows_added=None if appended is None else len(appended) - replaced,
        rows_replaced=None if appended is None else replaced,
    )
    return version_id


def features_of(service: Service, dataset: Dataset, version_id: str) -> tuple[Any, pd.DataFrame]:
    """The READY set's manifest and every row of it, as training reads them."""
    made = build_for_version(
        FeaturesRequest(dataset.name, version_id), service.store, service.engine
    )
    assert made.status == FeatureStatus.READY.value, made.reason
    assert made.manifest_key and made.data_key
    manifest = read_feature_manifest(json.loads(service.store.get_bytes(made.manifest_key)))
    return manifest, read_rows(service.store.get_bytes, manifest, made.data_key)


def snapshot_of(service: Service, dataset: Dataset, version_id: str) -> State:
    made = repo.find_feature_set(service.engine, dataset, version_id, dataset.spec_hash)
    assert made is not None and made.state_key
    return State.from_bytes(service.store.get_bytes(made.state_key))


def races(runners: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(runners["race_id"]))


EVENTS = ("in_order", "late", "new_category", "correction")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    events=st.lists(st.sampled_from(EVENTS), min_size=2, max_size=4),
)
def test_a_chain_of_appends_equals_full_rebuilds(
    service: Service, races_spec: DatasetSpec, seed: int, events: list[str]
) -> None:
    # GIVEN 70 races stored, then appends of 3 races each: in time order, with a late race,
    # with a new jockey, or re-sending a stored race with corrected positions
    spec = spec_named(races_spec, unique_name("inc"))
    dataset, _ = repo.register_dataset(service.engine, spec)
    runners, _ = generate_races(70 + 3 * len(events), seed=seed)
    ids = races(runners)
    whole_raw = runners[runners["race_id"].isin(ids[:60] + ids[61:70])]
    held_back = runners[runners["race_id"] == ids[60]]  # dated before the newest stored
    version_id = store_version(service, dataset, spec, canonical(whole_raw, spec))
    features_of(service, dataset, version_id)

    for i, event in enumerate(events):
        appended_raw = runners[runners["race_id"].isin(ids[70 + 3 * i : 73 + 3 * i])].copy()
        replaced_race, late = None, event == "late" and held_back is not None
        if late:
            appended_raw = pd.concat([held_back, appended_raw])
            held_back = None
        elif event == "new_category":
            appended_raw.loc[appended_raw.index[:2], "jockey_id"] = f"J-new-{i}"
        elif event == "correction":
            replaced_race = ids[50]
            corrected = whole_raw[whole_raw["race_id"] == replaced_race].copy()
            corrected["position"] = corrected["position"].to_numpy()[::-1]
            appended_raw = pd.concat([corrected, appended_raw])
        expected = expected_reason(whole_raw, appended_raw, spec)
        kept = whole_raw[whole_raw["race_id"] != replaced_race]
        replaced = len(whole_raw) - len(kept)
        whole_raw = pd.concat([kept, appended_raw])
        whole = canonical(whole_raw, spec)
        parent = version_id
        # WHEN the append's version is stored and its features asked for
        version_id = store_version(
            service, dataset, spec, whole, canonical(appended_raw, spec), parent, replaced
        )
        manifest, rows = features_of(service, dataset, version_id)

        # THEN every row's features and the snapshot are a full rebuild's
        full = build_features(whole, spec)
        assert_same_features(rows, full.frame, full.plan.features)
        assert_same_state(snapshot_of(service, dataset, version_id), full.state)
        assert manifest["rows"] == len(full.frame)
        # AND the manifest says how: corrections and late races are built whole
        build = manifest["build"]
        assert build["parent_version_id"] == parent
        if event == "correction":
            assert build["kind"] == "full" and "corrections replaced" in build["reason"]
        elif event in ("in_order", "new_category"):
            # from the snapshot unless a rider's history or a category's code says no (a
            # jockey first seen in these later races takes the next code: no obstacle)
            assert (build["kind"] == "incremental") == (expected == ""), (build, expected)
        elif late:  # its jockeys and trainers rode later, stored races
            assert build["kind"] == "full"
            assert "out of time order" in build["reason"] or "vocabulary" in build["reason"]


def test_an_append_writes_its_own_rows_and_training_reads_them_all(
    service: Service, races_spec: DatasetSpec
) -> None:
    # GIVEN 80 races stored with READY features, then 5 races appended, then 7 more
    spec = spec_named(races_spec, unique_name("inc"))
    dataset, _ = repo.register_dataset(service.engine, spec)
    runners, _ = generate_races(92, seed=2)
    ids = races(runners)
    first = store_version(
        service, dataset, spec, canonical(runners[runners["race_id"].isin(ids[:80])], spec)
    )
    features_of(service, dataset, first)
    second = store_version(
        service,
        dataset,
        spec,
        canonical(runners[runners["race_id"].isin(ids[:85])], spec),
        canonical(runners[runners["race_id"].isin(ids[80:85])], spec),
        first,
    )
    second_manifest, _ = features_of(service, dataset, second)
    whole = canonical(runners, spec)
    third = store_version(
        service,
        dataset,
        spec,
        whole,
        canonical(runners[runners["race_id"].isin(ids[85:])], spec),
        second,
    )
    # WHEN the last append's features are built
    manifest, rows = features_of(service, dataset, third)

    # THEN from the snapshot: its own file holds its own rows after its parent's parts, and
    # takes in the parent's own part when that is at most twice as big (few parts to read)
    assert manifest["build"] == {"kind": "incremental", "parent_version_id": second, "reason": None}
    stored_rows, day_one, day_two = (
        len(canonical(runners[runners["race_id"].isin(chosen)], spec))
        for chosen in (ids[:80], ids[80:85], ids[85:])
    )
    assert second_manifest["parts"][0]["rows"] == stored_rows
    assert day_one <= 2 * day_two  # so the two days' rows are one part
    assert [part["rows"] for part in manifest["parts"]] == [stored_rows, day_one + day_two]
    assert manifest["parts"][:-1] == second_manifest["parts"][: len(manifest["parts"]) - 1]
    own = pd.read_parquet(io.BytesIO(service.store.get_bytes(manifest["parts"][-1]["key"])))
    assert len(own) == manifest["parts"][-1]["rows"]
    # AND a training run gets the same rows as from one upload of the whole data
    other_spec = spec_named(races_spec, unique_name("whole"))
    other, _ = repo.register_dataset(service.engine, other_spec)
    once = store_version(service, other, other_spec, canonical(runners, other_spec))
    features_of(service, other, once)
    config = {"test_share": 0.2}
    appended_run = load_run_data(service.engine, service.store, _run(spec, third, config))
    whole_run = load_run_data(service.engine, service.store, _run(other_spec, once, config))
    features = manifest["features"]
    assert_same_features(appended_run.train, whole_run.train, features)
    assert_same_features(appended_run.test, whole_run.test, features)


def test_repair_forgets_a_set_whose_parent_part_is_lost(
    service: Service, races_spec: DatasetSpec
) -> None:
    # GIVEN an appended version built on its parent's part
    spec = spec_named(races_spec, unique_name("inc"))
    dataset, _ = repo.register_dataset(service.engine, spec)
    runners, _ = generate_races(90, seed=8)
    ids = races(runners)
    runners = runners[runners["race_id"].isin(ids[:85])]
    first = store_version(
        service, dataset, spec, canonical(runners[runners["race_id"].isin(ids[:80])], spec)
    )
    features_of(service, dataset, first)
    second = store_version(
        service,
        dataset,
        spec,
        canonical(runners, spec),
        canonical(runners[runners["race_id"].isin(ids[80:])], spec),
        first,
    )
    manifest, _ = features_of(service, dataset, second)
    assert manifest["build"]["kind"] == "incremental", manifest["build"]
    # WHEN the parent's features file is lost and the stack repairs itself
    service.store.delete(manifest["parts"][0]["key"])
    requested: list[FeaturesRequest] = []
    done = repair(service.engine, service.store, service.store, requested.append)
    # THEN both sets are forgotten and asked for again, the parent first
    assert done.feature_sets_forgotten == 2
    assert [r.version_id for r in requested] == [first, second]
    for request in requested:
        build_for_version(request, service.store, service.engine)
    rebuilt, rows = features_of(service, dataset, second)
    assert rebuilt["build"]["kind"] == "incremental"
    assert all(key for key in part_keys(rebuilt, ""))
    full = build_features(canonical(runners, spec), spec)
    assert_same_features(rows, full.frame, full.plan.features)
    assert np.array_equal(rows["horse_id"].to_numpy(), full.frame["horse_id"].to_numpy())


def _run(spec: DatasetSpec, version_id: str, config: dict[str, Any]) -> TrainingRun:
    return TrainingRun(
        run_id=unique_name("run"),
        version_id=version_id,
        spec_hash=spec.spec_hash,
        config={"dataset": spec.name, **config},
    )


def test_an_append_without_a_ready_parent_or_readable_rows_is_built_whole(
    service: Service, races_spec: DatasetSpec
) -> None:
    # GIVEN a stored version whose features were never built, and an append to it
    spec = spec_named(races_spec, unique_name("inc"))
    dataset, _ = repo.register_dataset(service.engine, spec)
    runners, _ = generate_races(92, seed=2)
    ids = races(runners)
    first = store_version(
        service, dataset, spec, canonical(runners[runners["race_id"].isin(ids[:80])], spec)
    )
    second = store_version(
        service,
        dataset,
        spec,
        canonical(runners[runners["race_id"].isin(ids[:85])], spec),
        canonical(runners[runners["race_id"].isin(ids[80:85])], spec),
        first,
    )
    # WHEN its features are asked for
    manifest, rows = features_of(service, dataset, second)
    # THEN they are built whole, and say why
    assert manifest["build"]["kind"] == "full"
    assert "no READY features" in manifest["build"]["reason"]
    assert len(rows) == manifest["rows"] == manifest["parts"][0]["rows"]

    # GIVEN a further append whose own rows' file is unreadable
    third = store_version(
        service,
        dataset,
        spec,
        canonical(runners, spec),
        canonical(runners[runners["race_id"].isin(ids[85:])], spec),
        second,
    )
    service.store.put_bytes(appended_key(dataset.name, third), b"not parquet", "text/plain")
    # WHEN its features are asked for THEN the whole data decides, and every row is right
    manifest, rows = features_of(service, dataset, third)
    assert manifest["build"]["kind"] == "full"
    assert "cannot extend the snapshot" in manifest["build"]["reason"]
    full = build_features(canonical(runners, spec), spec)
    assert_same_features(rows, full.frame, full.plan.features)


def test_daily_appends_keep_few_parts(service: Service, races_spec: DatasetSpec) -> None:
    # GIVEN 80 races stored, then twelve appends of one race each
    spec = spec_named(races_spec, unique_name("inc"))
    dataset, _ = repo.register_dataset(service.engine, spec)
    runners, _ = generate_races(92, seed=2)
    ids = races(runners)
    version_id = store_version(
        service, dataset, spec, canonical(runners[runners["race_id"].isin(ids[:80])], spec)
    )
    features_of(service, dataset, version_id)
    kinds = []
    for end in range(81, 93):
        version_id = store_version(
            service,
            dataset,
            spec,
            canonical(runners[runners["race_id"].isin(ids[:end])], spec),
            canonical(runners[runners["race_id"] == ids[end - 1]], spec),
            version_id,
        )
        # WHEN each one's features are built
        manifest, rows = features_of(service, dataset, version_id)
        kinds.append(manifest["build"]["kind"])
        # THEN the parts stay few (the small ones merge), and hold every row once
        # (each part more than twice the next: 5 parts of at least a race's rows hold 12
        # races' rows at most)
        assert len(manifest["parts"]) <= 1 + 5
        assert sum(part["rows"] for part in manifest["parts"]) == manifest["rows"] == len(rows)
    assert kinds.count("incremental") >= 8, kinds
    full = build_features(canonical(runners, spec), spec)
    assert_same_features(rows, full.frame, full.plan.features)
