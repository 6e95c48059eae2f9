"""The features function in the local stack: triggered by a new VALID version."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest

from gallop import aws
from gallop.client import GallopClient
from gallop.features.online import card_features
from gallop.features.service import FeaturesRequest, build_for_version
from gallop.features.state import State
from gallop.local.stack import LocalStack
from gallop.manifests import FeatureManifest
from gallop.metadata.db import engine_for
from gallop.spec import DatasetSpec
from gallop.storage import Store
from tests.conftest import paused_poller, spec_named, unique_name
from tests.unit.test_features import card_of, keyed


def wait_for_feature_sets(client: GallopClient, dataset: str, version_id: str) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = client.feature_sets(dataset, version_id)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("no feature set within 60 s")


def object_bytes(stack: LocalStack, key: str) -> bytes:
    assert stack.settings is not None
    s3 = aws.client("s3", stack.settings)
    return s3.get_object(Bucket=stack.settings.data_bucket, Key=key)["Body"].read()


def ingest(client: GallopClient, spec: DatasetSpec, data: bytes) -> str:
    client.register_dataset(spec)
    upload_id = client.upload_bytes(spec.name, data, "csv")
    status = client.wait_for_upload(spec.name, upload_id, timeout=60)
    assert status["status"] == "VALID"
    return str(status["version_id"])


def test_a_valid_version_gets_features_a_snapshot_and_a_manifest(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec, races_csv: Path
) -> None:
    # GIVEN race history uploaded under the shipped spec (with its derived section)
    spec = spec_named(races_spec, unique_name("feat"))
    version_id = ingest(client, spec, races_csv.read_bytes())

    # WHEN ingestion announces the version THEN the features function builds its features
    (feature_set,) = wait_for_feature_sets(client, spec.name, version_id)
    assert feature_set["status"] == "READY", feature_set["reason"]
    prefix = f"features/{spec.name}/{version_id}/{spec.spec_hash}/"
    assert feature_set["data_key"] == prefix + "features.parquet"

    frame = pd.read_parquet(io.BytesIO(object_bytes(stack, feature_set["data_key"])))
    manifest = json.loads(object_bytes(stack, feature_set["manifest_key"]))
    assert set(manifest) == set(FeatureManifest.__annotations__)  # the type is what is stored
    assert manifest["features"] == feature_set["features"]
    assert list(frame.columns[-len(manifest["features"]) :]) == manifest["features"]
    assert all(frame[name].dtype == np.float32 for name in manifest["features"])
    assert len(frame) == feature_set["row_count"] == len(pd.read_csv(races_csv))
    weight = manifest["reference"]["weight_kg"]
    assert sum(weight["counts"]) + weight["missing"] == len(frame)
    assert len(weight["edges"]) == len(weight["counts"]) + 1

    # AND the snapshot in S3 turns a card for a new race into features
    state = State.from_bytes(object_bytes(stack, feature_set["state_key"]))
    last = pd.read_csv(races_csv).tail(6).assign(race_id="R-NEXT", race_time="2031-01-01T15:00")
    names, rows = card_features(card_of(last), state)
    assert names == manifest["features"] and rows.shape == (6, len(names))
    assert not np.isnan(rows[:, names.index("horse_runs")]).any()


def test_features_that_cannot_be_built_mark_the_version_with_the_reason(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec, races_csv: Path
) -> None:
    # GIVEN a spec whose derived entry needs a column the data turns out not to have (with
    # `features` left to the data, the spec alone could not tell)
    body = races_spec.model_dump(mode="json") | {"name": unique_name("nofeat"), "features": None}
    body["derived"] = {"rolling": [{"by": "horse_id", "column": "speed", "windows": [3]}]}
    spec = DatasetSpec.model_validate(body)
    version_id = ingest(client, spec, races_csv.read_bytes())
    # THEN the feature set is FAILED, names the entry and the column, and nothing is pointed at
    (feature_set,) = wait_for_feature_sets(client, spec.name, version_id)
    assert feature_set["status"] == "FAILED"
    assert "rolling[0]: unknown column 'speed'" in feature_set["reason"]
    assert feature_set["data_key"] is None and feature_set["state_key"] is None
    assert stack.settings is not None
    keys = Store(stack.settings.data_bucket, aws.client("s3", stack.settings)).list_keys(
        f"features/{spec.name}/"
    )
    assert keys == []


def test_a_crash_while_writing_features_leaves_no_feature_set_and_a_retry_finishes(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec, races_csv: Path
) -> None:
    assert stack.settings is not None and stack.features_poller is not None
    spec = spec_named(races_spec, unique_name("crash"))
    with paused_poller(stack, "features_poller"):  # this test plays the function
        version_id = ingest(client, spec, races_csv.read_bytes())
        engine = engine_for(stack.settings.sqlalchemy_url)
        failing = boto3.client(
            "s3",
            region_name=stack.settings.aws_region,
            endpoint_url=stack.settings.aws_endpoint_url,
        )

        def crash(params: dict[str, Any], **_: Any) -> None:
            if params["Key"].endswith("manifest.json"):
                raise ConnectionError("simulated crash before the manifest")

        failing.meta.events.register("provide-client-params.s3.PutObject", crash)
        request = FeaturesRequest(spec.name, version_id)
        with pytest.raises(ConnectionError):
            build_for_version(request, Store(stack.settings.data_bucket, failing), engine)
        assert client.feature_sets(spec.name, version_id) == []

        s3 = aws.client("s3", stack.settings)
        done = build_for_version(request, Store(stack.settings.data_bucket, s3), engine)
        assert done.status == "READY"
        again = build_for_version(request, Store(stack.settings.data_bucket, s3), engine)
        assert again.id == done.id  # the same request twice is one feature set


def test_unknown_version_has_no_feature_sets(client: GallopClient, races_spec: DatasetSpec) -> None:
    from gallop.client import ApiError

    spec = spec_named(races_spec, unique_name("none"))
    client.register_dataset(spec)
    with pytest.raises(ApiError) as caught:
        client.feature_sets(spec.name, "v-0000")
    assert caught.value.status_code == 404


def test_offline_and_card_features_from_the_command_line(
    tmp_path: Path, races_spec: DatasetSpec
) -> None:
    from gallop.synth.races import generate_races
    from tests.conftest import SHIPPED_SPEC
    from tests.e2e.test_cli import gallop

    runners, _ = generate_races(120, seed=9)
    history = runners[runners["race_id"] != runners["race_id"].iloc[-1]]
    history.to_csv(tmp_path / "history.csv", index=False)
    out = tmp_path / "out" / "features.parquet"
    made = gallop(
        "features",
        "--data",
        str(tmp_path / "history.csv"),
        "--spec",
        str(SHIPPED_SPEC),
        "--out",
        str(out),
        state=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "x 59 features" in made.stdout  # 55 numbers and the 4 categories as codes
    features = pd.read_parquet(out)
    last = runners[runners["race_id"] == runners["race_id"].iloc[-1]]
    (tmp_path / "card.json").write_text(json.dumps(card_of(last)))
    shown = gallop(
        "features",
        "card",
        "--state",
        str(out.with_suffix(".state.npz")),
        "--card",
        str(tmp_path / "card.json"),
        state=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "horse_position_mean_5" in shown.stdout
    assert str(last["horse_id"].iloc[0]) in shown.stdout.splitlines()[0]
    assert len(features) == len(history)
    keyed(features)  # one row per runner


def test_card_route_returns_the_offline_rows_and_refuses_bad_cards(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    from gallop.client import ApiError
    from gallop.synth.races import generate_races

    # GIVEN a history without its last race, ingested, with features READY
    runners, _ = generate_races(150, seed=4)
    last = runners["race_id"] == runners["race_id"].iloc[-1]
    spec = spec_named(races_spec, unique_name("card"))
    version_id = ingest(client, spec, runners[~last].to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, version_id)["status"] == "READY"

    # WHEN the last race's card is posted THEN its rows equal the offline rows of that race
    reply = client.card_features(spec.name, version_id, card_of(runners[last]))
    from gallop.features.build import build_features
    from tests.unit.test_features import canonical

    offline = keyed(build_features(canonical(runners, spec), spec).frame)
    expected = offline.loc[
        [(r, h) for r, h in zip(runners[last]["race_id"], runners[last]["horse_id"], strict=True)]
    ]
    got = np.array([[np.nan if v is None else v for v in row] for row in reply["rows"]])
    np.testing.assert_array_equal(
        got.astype(np.float32), expected[reply["features"]].to_numpy(np.float32)
    )

    # AND a card that cannot be computed is a 422 that says why
    bad = card_of(runners[last])
    bad[0]["draw"] = "outside"
    with pytest.raises(ApiError) as caught:
        client.card_features(spec.name, version_id, bad)
    assert (
        caught.value.status_code == 422
        and "'draw' has values that are not numbers (1 row: 1)" in str(caught.value)
    )
    with pytest.raises(ApiError) as empty:
        client.card_features(spec.name, version_id, [])
    assert empty.value.status_code == 422 and "body.rows" in str(empty.value)
    with pytest.raises(ApiError) as unknown:
        client.card_features(spec.name, "v-0000", card_of(runners[last]))
    assert unknown.value.status_code == 404
