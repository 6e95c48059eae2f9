"""The whole upload path over real HTTP: API → presigned POST → moto S3 → S3 event in
SQS → poller → ingest handler → canonical Parquet and a metadata row."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gallop import aws
from gallop.client import GallopClient
from gallop.ingest.events import object_created_body
from gallop.ingest.problems import MAX_PROBLEMS
from gallop.ingest.service import ingest_object
from gallop.local.stack import LocalStack
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.spec import DatasetSpec
from gallop.storage import Store
from tests.bad_inputs import BAD_INPUTS, BadInput
from tests.conftest import paused_poller, spec_named, unique_name


def ingest(client: GallopClient, dataset: str, data: bytes, fmt: str = "csv") -> dict[str, Any]:
    upload_id = client.upload_bytes(dataset, data, fmt)
    status = client.wait_for_upload(dataset, upload_id, timeout=60)
    return client.version(dataset, status["version_id"])


def s3_of(stack: LocalStack) -> Any:
    return aws.client("s3", stack.settings)


def object_bytes(stack: LocalStack, key: str) -> bytes:
    assert stack.settings is not None
    return s3_of(stack).get_object(Bucket=stack.settings.data_bucket, Key=key)["Body"].read()


def keys_under(stack: LocalStack, prefix: str) -> list[str]:
    assert stack.settings is not None
    return Store(stack.settings.data_bucket, s3_of(stack)).list_keys(prefix)


@pytest.fixture()
def dataset(client: GallopClient, races_spec: DatasetSpec) -> str:
    spec = spec_named(races_spec, unique_name("races"))
    client.register_dataset(spec)
    return spec.name


def test_upload_becomes_a_valid_version_with_float32_parquet(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN a registered race dataset WHEN a CSV goes through the presigned POST
    version = ingest(client, dataset, races_csv.read_bytes())

    # THEN the version is VALID, counted, and its report names the features
    source = pd.read_csv(races_csv)
    assert version["status"] == "VALID"
    assert version["row_count"] == len(source)
    assert version["group_count"] == source["race_id"].nunique()
    assert version["report"]["errors"] == []
    assert version["report"]["features"] == races_spec.features

    # AND the canonical Parquet in curated/ has float32 features and the same rows
    assert version["data_key"] == f"curated/{dataset}/{version['version_id']}/data.parquet"
    table = pq.read_table(io.BytesIO(object_bytes(stack, version["data_key"])))
    for name in races_spec.features or []:
        assert str(table.schema.field(name).type) == "float", name
    frame = table.to_pandas()
    assert len(frame) == len(source)
    assert np.allclose(
        np.sort(frame["weight_kg"].to_numpy()), np.sort(source["weight_kg"].to_numpy(np.float32))
    )
    manifest = json.loads(
        object_bytes(stack, f"curated/{dataset}/{version['version_id']}/manifest.json")
    )
    assert manifest["content_hash"] == version["content_hash"]

    # AND the metadata row agrees
    engine = engine_for(stack.settings.sqlalchemy_url)  # type: ignore[union-attr]
    row = repo.find_version(engine, repo.get_dataset(engine, dataset), version["version_id"])
    assert row is not None and row.status == "VALID" and row.row_count == len(source)


def test_presigned_post_is_limited_in_size_and_time(client: GallopClient, dataset: str) -> None:
    upload = client.create_upload(dataset, "csv")
    policy = json.loads(__import__("base64").b64decode(upload["fields"]["policy"]))
    assert ["content-length-range", 1, upload["max_bytes"]] in policy["conditions"]
    assert {"key": upload["key"]} in policy["conditions"] or upload["fields"]["key"] == upload[
        "key"
    ]
    assert "expiration" in policy and upload["expires_at"]
    assert upload["key"] == f"raw/{dataset}/{upload['upload_id']}/data.csv"


def test_same_file_twice_is_one_version(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    first = ingest(client, dataset, races_csv.read_bytes())
    again = ingest(client, dataset, races_csv.read_bytes())
    # Same rows in another format and order are the same data, hence the same version.
    shuffled = pd.read_csv(races_csv).sample(frac=1.0, random_state=3)
    sink = io.BytesIO()
    shuffled.to_parquet(sink)
    as_parquet = ingest(client, dataset, sink.getvalue(), "parquet")
    assert first["version_id"] == again["version_id"] == as_parquet["version_id"]
    assert [v["version_id"] for v in client.versions(dataset)] == [first["version_id"]]
    assert len(keys_under(stack, f"curated/{dataset}/")) == 4  # data, report, manifest, index


def test_a_file_with_cr_only_line_endings_is_answered_as_the_same_version(
    client: GallopClient, dataset: str, races_csv: Path
) -> None:
    """The red team's CR-only file stayed PENDING for ever; it is read as the rows it holds
    (old Mac exports end lines with a lone CR), not refused."""
    first = ingest(client, dataset, races_csv.read_bytes())
    cr_only = ingest(client, dataset, races_csv.read_bytes().replace(b"\n", b"\r"))
    assert cr_only["status"] == "VALID" and cr_only["report"]["status"] == "VALID"
    assert cr_only["version_id"] == first["version_id"]


def test_same_sqs_message_twice_is_one_version(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    assert stack.resources is not None and stack.poller is not None
    sqs = aws.client("sqs", stack.settings)
    # GIVEN an upload whose S3 event arrives twice more before any is handled
    with paused_poller(stack):
        upload_id = client.upload_bytes(dataset, races_csv.read_bytes(), "csv")
        (key,) = keys_under(stack, f"raw/{dataset}/")
        body = object_created_body(stack.resources.bucket, key, races_csv.stat().st_size)
        for _ in range(2):
            sqs.send_message(QueueUrl=stack.resources.ingest.url, MessageBody=body)
    # WHEN the poller hands them over THEN there is exactly one version and one curated copy
    stack.poller.drain()
    version_id = client.upload_status(dataset, upload_id)["version_id"]
    assert [v["version_id"] for v in client.versions(dataset)] == [version_id]
    assert len(keys_under(stack, f"curated/{dataset}/")) == 4
    # AND the same event again, long after, changes nothing either
    sqs.send_message(QueueUrl=stack.resources.ingest.url, MessageBody=body)
    stack.poller.drain()
    assert [v["version_id"] for v in client.versions(dataset)] == [version_id]


def test_new_bytes_posted_again_with_the_same_form_are_ingested(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    # GIVEN a presigned form used for a file with a mistake in it
    upload = client.create_upload(dataset, "csv")
    bad = races_csv.read_bytes().replace(b"\n", b"\nnot,a,row\n", 1)
    post(upload, bad)
    first = client.wait_for_upload(dataset, upload["upload_id"], timeout=60)
    assert first["status"] == "REJECTED"
    # WHEN the corrected file is posted with the same (unexpired) form
    post(upload, races_csv.read_bytes())
    stack.poller.drain()  # type: ignore[union-attr]
    # THEN it is ingested too: same key, new bytes, a new upload and a new version
    form, again = client.uploads(dataset, prefix=upload["key"])
    assert form == client.upload_status(dataset, upload["upload_id"]) == first
    assert again["status"] == "VALID" and again["version_id"] != first["version_id"]
    assert {v["status"] for v in client.versions(dataset)} == {"REJECTED", "VALID"}
    # AND the form's own rejected file and report are kept
    quarantine = f"quarantine/{dataset}/{upload['upload_id']}/"
    assert object_bytes(stack, quarantine + "upload/data.csv") == bad
    assert first["report_key"] == quarantine + "report.json"


def post(upload: dict[str, Any], data: bytes) -> None:
    files = {"file": ("data.csv", data)}
    reply = httpx.post(upload["url"], data=upload["fields"], files=files, timeout=60)
    assert reply.status_code < 300, reply.text


def test_s3_test_events_and_objects_outside_raw_are_skipped(
    stack: LocalStack, client: GallopClient, dataset: str
) -> None:
    assert stack.resources is not None and stack.poller is not None
    sqs = aws.client("sqs", stack.settings)
    failures = stack.poller.failures
    test_event = (Path(__file__).parents[1] / "events" / "s3_test_event.json").read_text()
    sqs.send_message(QueueUrl=stack.resources.ingest.url, MessageBody=test_event)
    # A handler-written object under curated/ triggers nothing (the filter is raw/ only).
    s3_of(stack).put_object(Bucket=stack.resources.bucket, Key=f"curated/{dataset}/x", Body=b"1")
    stack.poller.drain()
    assert stack.poller.failures == failures
    assert client.versions(dataset) == []


def test_aws_s3_cp_into_raw_with_an_encoded_key_is_ingested(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    # GIVEN ops copy a file straight into raw/ (no presigned POST), with spaces in its name
    assert stack.resources is not None and stack.poller is not None
    key = f"raw/{dataset}/manual-2024/races (2024) final.csv"
    s3_of(stack).put_object(Bucket=stack.resources.bucket, Key=key, Body=races_csv.read_bytes())
    stack.poller.drain()
    # THEN the URL-encoded key in the event is decoded and the upload becomes a version
    (upload,) = client.uploads(dataset)
    assert (upload["key"], upload["status"]) == (key, "VALID")


def test_files_copied_deeper_or_shallower_into_raw_are_ingested_once_each(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    assert stack.resources is not None and stack.poller is not None
    s3 = s3_of(stack)
    failures = stack.poller.failures
    keys = [f"raw/{dataset}/2024/05/races.csv", f"raw/{dataset}/races.csv"]
    for key in keys:
        s3.put_object(Bucket=stack.resources.bucket, Key=key, Body=races_csv.read_bytes())
    # A key that names no dataset cannot be ingested; it is kept unclaimed, not retried.
    s3.put_object(Bucket=stack.resources.bucket, Key="raw/orphan.csv", Body=b"a,b\n1,2\n")
    stack.poller.drain()
    assert stack.poller.failures == failures
    versions = client.versions(dataset)
    assert [v["status"] for v in versions] == ["VALID"]  # both files: the same content
    assert sorted(u["key"] for u in client.uploads(dataset)) == sorted(keys)
    assert "raw/orphan.csv" in {u["key"] for u in client.unclaimed()}


def test_a_rejected_file_named_like_the_report_is_kept(
    stack: LocalStack, client: GallopClient, dataset: str
) -> None:
    assert stack.resources is not None and stack.poller is not None
    key = f"raw/{dataset}/by-hand/report.json"
    s3_of(stack).put_object(Bucket=stack.resources.bucket, Key=key, Body=b"{not json lines")
    stack.poller.drain()
    (upload,) = client.uploads(dataset)
    detail = client.version(dataset, upload["version_id"])
    quarantine = f"quarantine/{dataset}/{upload['upload_id']}/"
    assert detail["source_key"] == quarantine + "upload/report.json"
    assert object_bytes(stack, detail["source_key"]) == b"{not json lines"
    report = json.loads(object_bytes(stack, quarantine + "report.json"))
    assert report["status"] == "REJECTED"


def test_formula_like_text_is_stored_as_plain_text(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    frame = pd.read_csv(races_csv, dtype=str, keep_default_na=False)
    frame.loc[0, "horse_id"] = '=HYPERLINK("http://evil.example","win")'
    frame.loc[1, "course"] = "@SUM(A1:A9)"
    version = ingest(client, dataset, frame.to_csv(index=False).encode())
    assert version["status"] == "VALID"
    stored = pq.read_table(io.BytesIO(object_bytes(stack, version["data_key"]))).to_pandas()
    assert '=HYPERLINK("http://evil.example","win")' in set(stored["horse_id"])
    assert "@SUM(A1:A9)" in set(stored["course"])


@pytest.fixture(scope="module")
def seeded(stack: LocalStack, races_csv: Path, races_spec: DatasetSpec) -> dict[str, Any]:
    """A dataset holding one VALID version that every bad upload must leave untouched."""
    assert stack.api_url is not None
    client = GallopClient(stack.api_url, stack.api_key)
    spec = spec_named(races_spec, unique_name("seeded"))
    client.register_dataset(spec)
    version = ingest(client, spec.name, races_csv.read_bytes())
    client.close()
    assert version["status"] == "VALID"
    return {"name": spec.name, "version": version, "data": object_bytes(stack, version["data_key"])}


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.id)
def test_bad_upload_is_rejected_quarantined_and_harmless(
    stack: LocalStack, client: GallopClient, seeded: dict[str, Any], races_csv: Path, bad: BadInput
) -> None:
    name, good_version = seeded["name"], seeded["version"]
    data = bad.make(races_csv.read_bytes())
    # WHEN the bad file is uploaded
    refused_by_s3 = {"file_too_large": "EntityTooLarge", "empty_file": "EntityTooSmall"}
    if bad.code in refused_by_s3:
        # S3 refuses it at the form (the local S3 as well); copied into raw/ by hand,
        # past any form, it is the handler that refuses it
        with pytest.raises(RuntimeError, match=refused_by_s3[bad.code]):
            client.upload_bytes(name, data, bad.file_format)
        key = f"raw/{name}/{unique_name('by-hand')}/data.{bad.file_format}"
        s3_of(stack).put_object(Bucket=stack.settings.data_bucket, Key=key, Body=data)  # type: ignore[union-attr]
        stack.poller.drain()  # type: ignore[union-attr]
        (copied,) = client.uploads(name, prefix=key)  # a copied file's upload: by its key
        upload_id = copied["upload_id"]
    else:
        upload_id = client.upload_bytes(name, data, bad.file_format)
        key = client.upload_status(name, upload_id)["key"]
    status = client.wait_for_upload(name, upload_id, timeout=60)
    version = client.version(name, status["version_id"])

    # THEN it is REJECTED with a report naming the problem
    assert version["status"] == "REJECTED"
    codes = [e["code"] for e in version["report"]["errors"]]
    assert bad.code in codes, codes
    message = next(e["message"] for e in version["report"]["errors"] if e["code"] == bad.code)
    assert bad.says in message

    # AND the upload is kept in quarantine, byte for byte, with the report beside it
    quarantine = f"quarantine/{name}/{upload_id}/"
    assert version["source_key"].startswith(quarantine)
    assert object_bytes(stack, version["source_key"]) == data
    assert (
        json.loads(object_bytes(stack, quarantine + "report.json"))["errors"]
        == (version["report"]["errors"])
    )
    assert keys_under(stack, key) == []

    # AND the version stored before is untouched
    stored = {v["version_id"]: v for v in client.versions(name)}
    assert stored[good_version["version_id"]]["status"] == "VALID"
    assert stored[good_version["version_id"]]["content_hash"] == good_version["content_hash"]
    assert object_bytes(stack, good_version["data_key"]) == seeded["data"]


def test_a_crash_midway_leaves_no_half_version_and_a_retry_finishes(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    assert stack.settings is not None
    engine = engine_for(stack.settings.sqlalchemy_url)
    # GIVEN an upload that has arrived in raw/ (processed by hand below, not by the poller)
    key = f"raw/{dataset}/crash-1/data.csv"
    s3 = aws.client("s3", stack.settings)
    with paused_poller(stack):
        s3.put_object(Bucket=stack.settings.data_bucket, Key=key, Body=races_csv.read_bytes())
        # WHEN S3 fails after the data and report are written, before the manifest
        failing = boto3.client(  # a client of its own, so the fault stays in this test
            "s3",
            region_name=stack.settings.aws_region,
            endpoint_url=stack.settings.aws_endpoint_url,
        )

        def crash_on_manifest(params: dict[str, Any], **_: Any) -> None:
            if params["Key"].endswith("/manifest.json"):
                raise ConnectionError("simulated crash before the manifest is written")

        failing.meta.events.register("provide-client-params.s3.PutObject", crash_on_manifest)
        with pytest.raises(ConnectionError):
            ingest_object(key, Store(stack.settings.data_bucket, failing), engine, stack.settings)
        assert any(k.endswith("data.parquet") for k in keys_under(stack, f"curated/{dataset}/"))

        # THEN no version exists and the upload is still pending, not half-done
        assert client.versions(dataset) == []
        (upload,) = client.uploads(dataset)
        assert (upload["key"], upload["status"]) == (key, "PENDING")

        # AND a retry (the message comes back from SQS) finishes the job
        outcome = ingest_object(key, Store(stack.settings.data_bucket, s3), engine, stack.settings)
        assert outcome.status == "VALID" and outcome.created
        assert outcome.upload_id == upload["upload_id"]
        assert [v["version_id"] for v in client.versions(dataset)] == [outcome.version_id]


def test_a_message_that_keeps_failing_goes_to_the_dead_letter_queue(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    assert stack.resources is not None and stack.poller is not None
    sqs = aws.client("sqs", stack.settings)
    paused = stack.poller
    failures_before = paused.failures
    # GIVEN one batch holding a message that is not an S3 event and a good upload's event
    with paused_poller(stack):
        sqs.send_message(QueueUrl=stack.resources.ingest.url, MessageBody="this is not json")
        upload_id = client.upload_bytes(dataset, races_csv.read_bytes(), "csv")
    # THEN the good one is ingested at once, and only the bad one is reported as a batch
    # item failure each time until it is dead-lettered after 3 receives
    stack.poller.drain(timeout=30)
    assert client.upload_status(dataset, upload_id)["status"] == "VALID"
    dead = sqs.receive_message(QueueUrl=stack.resources.ingest_dlq.url, WaitTimeSeconds=5)
    assert [m["Body"] for m in dead.get("Messages", [])] == ["this is not json"]
    # (the paused poller's last batch may have been in hand when the message arrived)
    assert paused.failures - failures_before + stack.poller.failures == 3


def test_the_same_bytes_in_two_uploads_each_get_their_own_report(
    client: GallopClient, dataset: str
) -> None:
    # GIVEN bytes that are neither Parquet nor JSON Lines, declared once as each, and twice
    # as Parquet
    data = b"PAR1 this is not a table\n"
    uploads = {
        upload_id: fmt
        for fmt in ("parquet", "jsonl", "parquet")
        for upload_id in [client.upload_bytes(dataset, data, fmt)]
    }
    # THEN each upload is answered with a report of its own: its id, its format's problem
    codes = {"parquet": "not_parquet", "jsonl": "malformed_jsonl"}
    for upload_id, fmt in uploads.items():
        status = client.wait_for_upload(dataset, upload_id, timeout=60)
        report = client.version(dataset, status["version_id"])["report"]
        assert (report["status"], report["upload_id"]) == ("REJECTED", upload_id)
        assert report["file"] == f"data.{fmt}"
        assert [e["code"] for e in report["errors"]] == [codes[fmt]]
    assert len({v["version_id"] for v in client.versions(dataset)}) == 3


def test_a_report_lists_so_many_problems_and_counts_the_rest(
    client: GallopClient, races_spec: DatasetSpec, races_csv: Path
) -> None:
    # GIVEN a dataset whose features are every numeric column, and a file of 120 of them,
    # each with an infinite value: one problem per column
    spec = spec_named(races_spec, unique_name("wide")).model_copy(update={"features": None})
    client.register_dataset(spec)
    frame = pd.read_csv(races_csv, dtype=str, keep_default_na=False)
    extra = pd.DataFrame({f"x{i}": ["1"] * len(frame) for i in range(120)})
    extra.loc[0] = "inf"
    data = pd.concat([frame, extra], axis=1).to_csv(index=False).encode()
    # WHEN it is uploaded
    version = ingest(client, spec.name, data)
    # THEN the report lists the first problems and counts the others
    report = version["report"]
    assert version["status"] == "REJECTED"
    assert len(report["errors"]) == MAX_PROBLEMS
    assert report["errors_left_out"] == 120 - MAX_PROBLEMS
    assert {e["code"] for e in report["errors"]} == {"infinite_value"}
    summary = {v["version_id"]: v for v in client.versions(spec.name)}[version["version_id"]]
    assert summary["errors"] == 120
