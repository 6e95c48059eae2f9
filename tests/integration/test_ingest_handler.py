"""The ingest function's edges: the event shapes it reads and what it logs."""

from __future__ import annotations

import json
import logging

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import EndpointConnectionError

from gallop import aws
from gallop.client import GallopClient
from gallop.ingest.events import object_created_body, objects_created
from gallop.local.lambda_runtime import LocalContext, load_handler
from gallop.local.stack import LocalStack
from gallop.settings import MAX_RECEIVE_COUNT
from tests.conftest import EVENTS, load_event, paused_poller, spec_named, unique_name


def test_object_created_keys_are_url_decoded() -> None:
    (created,) = objects_created(json.dumps(load_event("s3_object_created.json")))
    assert created.bucket == "gallop-data"
    assert created.key == "raw/races/0f1e2d3c/my races (2024).csv"
    assert created.size == 1024


def test_s3_test_event_names_no_object() -> None:
    assert objects_created((EVENTS / "s3_test_event.json").read_text()) == []


def test_a_redriven_body_reads_back_as_the_same_object() -> None:
    body = object_created_body("gallop-data", "raw/d/u/a file+name.csv", 7)
    (created,) = objects_created(body)
    assert (created.key, created.size) == ("raw/d/u/a file+name.csv", 7)


def test_handler_logs_json_with_the_message_id_as_correlation_id(
    stack: LocalStack, client: GallopClient, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a real SQS event carrying an S3 event for an object no upload ever made
    assert stack.resources is not None
    body = object_created_body(stack.resources.bucket, f"raw/{unique_name()}/u1/data.csv", 10)
    record = sqs_record(body, stack.resources.ingest.arn)
    handler = load_handler("ingest")
    # WHEN the handler runs THEN the message is not retried (retrying cannot help) ...
    reply = handler({"Records": [record]}, LocalContext("ingest"))
    assert reply == {"batchItemFailures": []}
    # ... and the log line is JSON that names the problem under the message's correlation id
    (error,) = [r for r in caplog.records if r.name == "gallop-ingest" and r.levelname == "ERROR"]
    # Format it with the handler the function logs through (Powertools' JSON formatter).
    (powertools,) = logging.getLogger("gallop-ingest").handlers
    line = json.loads(powertools.format(error))
    assert line["correlation_id"] == record["messageId"]
    assert line["service"] == "gallop-ingest" and line["function_name"] == "ingest"
    assert line["message"].startswith("ObjectMissing: raw/")


def test_a_file_for_an_unregistered_dataset_is_logged_as_kept_unclaimed(
    stack: LocalStack, client: GallopClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert stack.resources is not None and stack.settings is not None
    key = "raw/unregistered/u1/data.csv"
    with paused_poller(stack):  # this test invokes the handler itself
        s3 = aws.client("s3", stack.settings)
        s3.put_object(Bucket=stack.resources.bucket, Key=key, Body=b"a,b\n1,2\n")
        body = object_created_body(stack.resources.bucket, key, 8)
        record = sqs_record(body, stack.resources.ingest.arn)
        assert load_handler("ingest")({"Records": [record]}, LocalContext("ingest")) == {
            "batchItemFailures": []
        }
    (kept,) = [r for r in caplog.records if r.name == "gallop-ingest" and "unclaimed" in r.msg]
    assert kept.levelname == "WARNING"
    (powertools,) = logging.getLogger("gallop-ingest").handlers
    line = json.loads(powertools.format(kept))
    assert line["correlation_id"] == record["messageId"]
    assert "no dataset named 'unregistered'" in line["message"]
    assert line["unclaimed_key"] == "unclaimed/unregistered/u1/data.csv"


def test_handler_publishes_counts_and_durations_as_cloudwatch_metrics(
    stack: LocalStack,
    client: GallopClient,
    races_csv,
    races_spec,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN metrics switched on (the quiet local stack switches them off)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    assert stack.resources is not None and stack.settings is not None
    spec = spec_named(races_spec, unique_name("metrics"))
    client.register_dataset(spec)
    key = f"raw/{spec.name}/m1/data.csv"
    with paused_poller(stack):  # this test invokes the handler itself
        s3 = aws.client("s3", stack.settings)
        s3.put_object(Bucket=stack.resources.bucket, Key=key, Body=races_csv.read_bytes())
        body = object_created_body(stack.resources.bucket, key, races_csv.stat().st_size)
        event = {"Records": [sqs_record(body, stack.resources.ingest.arn)]}
        capsys.readouterr()
        # WHEN the handler ingests the upload
        assert load_handler("ingest")(event, LocalContext("ingest")) == {"batchItemFailures": []}
    # THEN an Embedded Metric Format line reports the new VALID version and its duration
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    assert emf, "no EMF line printed"
    names = {m["Name"] for m in emf[-1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"VersionsValid", "IngestSeconds"} <= names
    assert emf[-1]["VersionsValid"] == [1.0]  # one new version, not an accumulated history
    assert emf[-1]["IngestSeconds"][0] > 0


def sqs_record(body: str, queue_arn: str, receive_count: int = 1) -> dict:
    return {
        "messageId": "4f1b7a8e-0000-4000-8000-000000000002",
        "receiptHandle": "handle",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
        "messageAttributes": {},
        "md5OfBody": "x",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


@pytest.mark.parametrize(
    ("failure", "settled"),
    [
        (RuntimeError("a bug met by this file only"), True),
        (EndpointConnectionError(endpoint_url="http://s3"), False),  # S3 away for a while
    ],
    ids=["unexpected", "transient"],
)
def test_a_message_failing_at_every_attempt_is_answered_unless_the_failure_is_transient(
    stack: LocalStack, client: GallopClient, races_csv, races_spec, failure, settled
) -> None:
    # GIVEN an upload whose processing fails each time it is read from S3
    assert stack.resources is not None and stack.settings is not None
    spec = spec_named(races_spec, unique_name("poison"))
    client.register_dataset(spec)
    key = f"raw/{spec.name}/{unique_name('p')}/data.csv"
    s3 = aws.client("s3", stack.settings)  # the client the ingest function uses

    def fail(**_: object) -> None:
        raise failure

    with paused_poller(stack):
        s3.put_object(Bucket=stack.resources.bucket, Key=key, Body=races_csv.read_bytes())
        body = object_created_body(stack.resources.bucket, key, races_csv.stat().st_size)
        s3.meta.events.register("before-call.s3.GetObject", fail)
        try:
            # WHEN SQS delivers it up to the last time before its dead-letter queue
            record = sqs_record(body, stack.resources.ingest.arn)
            failed = [
                left_for_retry(record | {"attributes": {"ApproximateReceiveCount": str(n)}})
                for n in range(1, MAX_RECEIVE_COUNT + 1)
            ]
        finally:
            s3.meta.events.unregister("before-call.s3.GetObject", fail)
    # THEN it is retried until the last delivery, which settles it as REJECTED with an
    # internal error (the file kept in quarantine) ...
    (status,) = client.uploads(spec.name, prefix=key)  # a copied file's upload: by its key
    if settled:
        assert failed == [True] * (MAX_RECEIVE_COUNT - 1) + [False]
        report = client.version(spec.name, status["version_id"])["report"]
        assert [e["code"] for e in report["errors"]] == ["internal_error"]
        assert "RuntimeError" in report["errors"][0]["message"]
        detail = client.version(spec.name, status["version_id"])
        upload_id = status["upload_id"]
        assert detail["source_key"] == f"quarantine/{spec.name}/{upload_id}/upload/data.csv"
    # ... unless S3 or the database was away: that is retried every time, never rejected
    else:
        assert failed == [True] * MAX_RECEIVE_COUNT
        assert status["status"] == "PENDING"


def left_for_retry(record: dict) -> bool:
    """Whether SQS would deliver the record again: reported as a batch item failure, or
    (Powertools' way when every record of a batch failed) the invocation raised."""
    try:
        reply = load_handler("ingest")({"Records": [record]}, LocalContext("ingest"))
    except BatchProcessingError:
        return True
    return bool(reply["batchItemFailures"])
