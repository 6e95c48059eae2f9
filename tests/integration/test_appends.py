"""Appends through the local stack (moto server, S3 -> SQS -> ingest): today's results
added to the stored history, checked as a whole, with lineage; every bad append REJECTED
with the stored versions untouched."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pytest

from gallop import aws
from gallop.client import GallopClient
from gallop.ingest.canonical import content_hash
from gallop.ingest.readers import read_table
from gallop.ingest.validate import validate
from gallop.layout import APPEND, online_snapshot_key
from gallop.local.stack import LocalStack
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store
from gallop.synth.races import generate_races
from tests.conftest import spec_named, unique_name


def _races(n: int = 60, seed: int = 3) -> pd.DataFrame:
    runners, _ = generate_races(n, seed=seed)
    runners["race_time"] = pd.to_datetime(runners["race_time"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return runners


def _split(runners: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, the last `days` distinct race days)."""
    day = runners["race_time"].str[:10]
    last = sorted(day.unique())[-days:]
    return runners[~day.isin(last)], runners[day.isin(last)]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _content_hash(rows: pd.DataFrame, spec: DatasetSpec) -> str:
    """What one CSV upload of these rows is identified by."""
    canonical = validate(read_table(_csv(rows), "csv"), spec).canonical
    assert canonical is not None
    return content_hash(canonical, spec)


def _put(stack: LocalStack, client: GallopClient, key: str, data: bytes) -> dict[str, Any]:
    """Copy a file into the data bucket as `aws s3 cp` would, and wait for its upload."""
    assert stack.settings is not None
    s3 = aws.client("s3", stack.settings)
    s3.put_object(Bucket=stack.settings.data_bucket, Key=key, Body=data)  # type: ignore[union-attr]
    dataset = key.split("/")[1]
    deadline = 60.0
    started = time.monotonic()
    while not (found := client.uploads(dataset, prefix=key)):
        assert time.monotonic() - started < deadline, f"{key} was never seen"
        time.sleep(0.1)
    upload = found[-1]
    return client.wait_for_upload(dataset, upload["upload_id"], timeout=60)


def _stored(stack: LocalStack, client: GallopClient, dataset: str) -> dict[str, bytes]:
    """Every object under the dataset's curated/ prefix, with its bytes."""
    assert stack.settings is not None
    s3 = aws.client("s3", stack.settings)
    prefix = f"curated/{dataset}/"
    listed = s3.list_objects_v2(Bucket=stack.settings.data_bucket, Prefix=prefix)  # type: ignore[union-attr]
    return {
        o["Key"]: s3.get_object(Bucket=stack.settings.data_bucket, Key=o["Key"])["Body"].read()  # type: ignore[union-attr]
        for o in listed.get("Contents", [])
    }


def _online_pointer(stack: LocalStack, spec: DatasetSpec) -> bytes | None:
    """The object that names the snapshot race cards are completed from (None: none yet)."""
    assert stack.settings is not None
    try:
        return Store.from_settings(stack.settings).get_bytes(
            online_snapshot_key(spec.name, spec.spec_hash)
        )
    except ObjectMissing:
        return None


@pytest.fixture()
def history(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, str]:
    """A dataset with a VALID history; returns (spec, history, the next days, version id)."""
    spec = spec_named(races_spec, unique_name("app"))
    client.register_dataset(spec)
    before, after = _split(_races(), days=3)
    status = _put(stack, client, f"raw/{spec.name}/history.csv", _csv(before))
    assert status["status"] == "VALID"
    return spec, before, after, status["version_id"]


def test_an_append_under_the_append_folder_extends_the_newest_version_with_lineage(
    stack: LocalStack, client: GallopClient, history: Any
) -> None:
    spec, before, after, parent = history
    day = after[after["race_time"].str[:10] == after["race_time"].str[:10].min()]
    # WHEN the day's results are copied under raw/{dataset}/append/
    status = _put(stack, client, f"raw/{spec.name}/append/day1.csv", _csv(day))
    # THEN a new VALID version holds the history plus the day, and says where it came from
    assert status["status"] == "VALID" and status["version_id"] != parent
    version = client.version(spec.name, status["version_id"])
    assert version["row_count"] == len(before) + len(day)
    assert version["report"]["append"] == {
        "parent_version_id": parent,
        "rows_added": len(day),
        "rows_replaced": 0,
        "replaced_groups": [],
    }
    # AND its id is the content hash of the whole: what one upload of all the rows would get
    assert version["content_hash"] == _content_hash(pd.concat([before, day]), spec)

    # WHEN the same append is sent again THEN it is the same version, nothing added
    again = _put(stack, client, f"raw/{spec.name}/append/day1-again.csv", _csv(day))
    assert (again["status"], again["version_id"]) == ("VALID", status["version_id"])
    assert [v["version_id"] for v in client.versions(spec.name)] == [parent, status["version_id"]]
    assert [w["code"] for w in again["report"]["warnings"]][:1] == ["already_stored"]

    # WHEN an append repeats some stored rows beside new ones THEN REJECTED, naming them
    next_day = after[after["race_time"].str[:10] > day["race_time"].str[:10].max()]
    mixed = _put(
        stack,
        client,
        f"raw/{spec.name}/append/mixed.csv",
        _csv(pd.concat([day.iloc[:3], next_day])),
    )
    assert mixed["status"] == "REJECTED"
    (error,) = client.version(spec.name, mixed["version_id"])["report"]["errors"]
    assert error["code"] == "duplicate_stored_row" and error["rows"] == [1, 2, 3]


def test_the_whole_history_uploaded_again_is_the_appended_version(
    stack: LocalStack, client: GallopClient, history: Any
) -> None:
    spec, before, after, _ = history
    appended = _put(stack, client, f"raw/{spec.name}/append/days.csv", _csv(after))
    whole = _put(stack, client, f"raw/{spec.name}/all.csv", _csv(pd.concat([after, before])))
    assert whole["status"] == appended["status"] == "VALID"
    assert whole["version_id"] == appended["version_id"]


def test_a_race_sent_again_is_refused_unless_it_comes_as_corrections(
    stack: LocalStack, client: GallopClient, history: Any
) -> None:
    spec, before, _, parent = history
    # GIVEN a stored race with its result changed (a disqualification: first and second swap)
    race_id = before["race_id"].iloc[-1]
    race = before[before["race_id"] == race_id].copy()
    first, second = race["position"] == 1, race["position"] == 2
    race.loc[first, "position"], race.loc[second, "position"] = 2, 1
    stored_before = _stored(stack, client, spec.name)

    # WHEN it is appended without saying it corrects THEN REJECTED, naming the race
    refused = _put(stack, client, f"raw/{spec.name}/append/fix.csv", _csv(race))
    assert refused["status"] == "REJECTED"
    errors = {
        e["code"]: e for e in client.version(spec.name, refused["version_id"])["report"]["errors"]
    }
    # (the runners placed third and after repeat their stored rows; the first two do not)
    assert set(errors) == {"group_already_stored", "duplicate_stored_row"}
    assert errors["group_already_stored"]["examples"] == [race_id]
    assert errors["group_already_stored"]["row_count"] == 2
    assert _stored(stack, client, spec.name) == stored_before  # nothing stored changed

    # WHEN it comes under corrections/ THEN the race's stored rows are replaced
    fixed = _put(stack, client, f"raw/{spec.name}/corrections/fix.csv", _csv(race))
    assert fixed["status"] == "VALID"
    version = client.version(spec.name, fixed["version_id"])
    assert version["report"]["append"] == {
        "parent_version_id": parent,
        "rows_added": len(race),
        "rows_replaced": len(race),
        "replaced_groups": [race_id],
    }
    assert version["row_count"] == len(before)
    corrected = pd.concat([before[before["race_id"] != race_id], race])
    assert version["content_hash"] == _content_hash(corrected, spec)


def test_results_older_than_the_newest_race_are_appended(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    # GIVEN a history with a gap: a day in its middle arrives late
    spec = spec_named(races_spec, unique_name("late"))
    client.register_dataset(spec)
    runners = _races()
    day = runners["race_time"].str[:10]
    late_day = sorted(day.unique())[len(day.unique()) // 2]
    assert (
        _put(stack, client, f"raw/{spec.name}/h.csv", _csv(runners[day != late_day]))["status"]
        == "VALID"
    )
    # WHEN the late day is appended THEN the version holds every race, as one upload would
    late = _put(stack, client, f"raw/{spec.name}/append/late.csv", _csv(runners[day == late_day]))
    assert late["status"] == "VALID"
    version = client.version(spec.name, late["version_id"])
    assert version["content_hash"] == _content_hash(runners, spec)
    # AND its features are built whole, never extended from a snapshot that is ahead of it
    built = client.wait_for_features(spec.name, late["version_id"], timeout=120)
    assert built["status"] == "READY" and built["build"]["kind"] == "full"
    assert built["build"]["reason"].startswith("rows out of time order")


@pytest.mark.parametrize(
    "problem",
    ["no_valid_version", "columns_differ", "empty", "corrupt", "horse_twice"],
)
def test_a_bad_append_is_rejected_and_leaves_every_stored_version_as_it_was(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec, problem: str
) -> None:
    spec = spec_named(races_spec, unique_name("bad"))
    client.register_dataset(spec)
    before, after = _split(_races(), days=1)
    if problem != "no_valid_version":
        history = _put(stack, client, f"raw/{spec.name}/h.csv", _csv(before))
        assert history["status"] == "VALID"
        built = client.wait_for_features(spec.name, history["version_id"], timeout=120)
        assert built["status"] == "READY"
    versions = client.versions(spec.name)
    stored = _stored(stack, client, spec.name)
    pointer = _online_pointer(stack, spec)
    body = {
        "no_valid_version": _csv(after),
        "columns_differ": _csv(after.drop(columns=["going"]).assign(weather="dry")),
        "empty": b"",
        "corrupt": b"\x00\x01PK\x03\x04 not a table",
        "horse_twice": _csv(pd.concat([after, after.iloc[[0]].assign(draw=99)])),
    }[problem]
    status = _put(stack, client, f"raw/{spec.name}/append/{problem}.csv", body)
    assert status["status"] == "REJECTED"
    report = client.version(spec.name, status["version_id"])["report"]
    codes = {e["code"] for e in report["errors"]}
    expected = {
        "no_valid_version": "no_valid_version",
        "columns_differ": "columns_differ",
        "empty": "empty_file",
        "corrupt": "binary_content",
        "horse_twice": "duplicate_entity_in_group",
    }[problem]
    assert expected in codes, report
    if problem == "columns_differ":
        message = report["errors"][0]["message"]
        assert "'going'" in message and "'weather'" in message
    # Nothing stored changed: the versions before are as they were, their objects too
    after_versions = [v for v in client.versions(spec.name) if v["status"] == "VALID"]
    assert after_versions == [v for v in versions if v["status"] == "VALID"]
    assert {k: v for k, v in _stored(stack, client, spec.name).items()} == stored
    assert _online_pointer(stack, spec) == pointer  # cards are still scored as before
    # AND the rejected file is kept in quarantine, beside its report
    kept = client.version(spec.name, status["version_id"])["source_key"]
    assert kept.startswith(f"quarantine/{spec.name}/") and kept.endswith(f"{problem}.csv")


def test_an_append_by_presigned_post_and_its_corrections_through_the_api(
    client: GallopClient, history: Any
) -> None:
    spec, before, after, parent = history
    # WHEN the next days go up through the API as an append
    upload_id = client.upload_bytes(spec.name, _csv(after), "csv", mode=APPEND)
    status = client.wait_for_upload(spec.name, upload_id, timeout=60)
    # THEN the version extends the history, and says so
    assert status["status"] == "VALID"
    version = client.version(spec.name, status["version_id"])
    assert (version["parent_version_id"], version["rows_added"], version["rows_replaced"]) == (
        parent,
        len(after),
        0,
    )
    # WHEN one of those races comes again, corrected, as corrections
    race = after[after["race_id"] == after["race_id"].iloc[0]].copy()
    race["odds"] = race["odds"].astype(float) + 1
    fixed_id = client.upload_bytes(spec.name, _csv(race), "csv", mode=APPEND, corrections=True)
    fixed = client.version(
        spec.name, client.wait_for_upload(spec.name, fixed_id, timeout=60)["version_id"]
    )
    # THEN it replaced that race's rows in the newest version
    assert (fixed["parent_version_id"], fixed["rows_added"], fixed["rows_replaced"]) == (
        status["version_id"],
        len(race),
        len(race),
    )
    assert fixed["row_count"] == len(before) + len(after)
