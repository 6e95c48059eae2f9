"""Files copied straight into the data bucket, as `aws s3 cp` and `aws s3 sync` do, over
the moto server with S3 → SQS notifications and the real ingest handler: each object is
an upload of its own, and a file no dataset claims is kept, listed and ingested later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gallop import aws
from gallop.client import ApiError, GallopClient
from gallop.ingest.events import object_created_body
from gallop.local.lambda_runtime import LocalContext, load_handler
from gallop.local.stack import LocalStack
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.spec import DatasetSpec
from tests.bad_inputs import BAD_INPUTS
from tests.conftest import paused_poller, spec_named, unique_name
from tests.e2e.test_ingest_e2e import keys_under, object_bytes, s3_of
from tests.integration.test_ingest_handler import sqs_record

BAD = {b.id: b for b in BAD_INPUTS}


@pytest.fixture()
def dataset(client: GallopClient, races_spec: DatasetSpec) -> str:
    spec = spec_named(races_spec, unique_name("copied"))
    client.register_dataset(spec)
    return spec.name


def copy_in(stack: LocalStack, files: dict[str, bytes]) -> None:
    """Put each file as `aws s3 cp` does, then let the ingest function handle them all."""
    assert stack.resources is not None and stack.poller is not None
    for key, data in files.items():
        s3_of(stack).put_object(Bucket=stack.resources.bucket, Key=key, Body=data)
    stack.poller.drain()


def races_in_parts(races_csv: Path, parts: int) -> list[bytes]:
    """The race file cut into files of whole races, each valid on its own."""
    frame = pd.read_csv(races_csv, dtype=str, keep_default_na=False)
    races = frame["race_id"].unique()
    return [
        frame[frame["race_id"].isin(races[i::parts])].to_csv(index=False).encode()
        for i in range(parts)
    ]


def by_key(uploads: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {u["key"]: u for u in uploads}


def test_three_files_copied_into_one_folder_are_three_uploads_with_their_own_reports(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    # GIVEN a bad, a good and another bad file copied into the same folder
    good = races_csv.read_bytes()
    folder = f"raw/{dataset}/2024/"
    files = {
        folder + "a.csv": BAD["odds-not-above-one"].make(good),
        folder + "b.csv": good,
        folder + "c.csv": BAD["feature-infinite"].make(good),
    }
    copy_in(stack, files)

    # THEN there are three versions, each with a report of its own that names its file
    versions = [client.version(dataset, v["version_id"]) for v in client.versions(dataset)]
    assert sorted(v["status"] for v in versions) == ["REJECTED", "REJECTED", "VALID"]
    assert len({v["report_key"] for v in versions}) == 3
    assert len({v["report"]["upload_id"] for v in versions}) == 3

    # AND three uploads, each with its own status
    uploads = by_key(client.uploads(dataset, prefix=folder))
    assert {key: u["status"] for key, u in uploads.items()} == {
        folder + "a.csv": "REJECTED",
        folder + "b.csv": "VALID",
        folder + "c.csv": "REJECTED",
    }
    assert len({u["upload_id"] for u in uploads.values()}) == 3

    # AND each rejected file is kept, byte for byte, beside its own report
    for name, code in (("a.csv", "invalid_odds"), ("c.csv", "infinite_value")):
        upload = uploads[folder + name]
        assert upload["report_key"] == f"quarantine/{dataset}/{upload['upload_id']}/report.json"
        stored = json.loads(object_bytes(stack, upload["report_key"]))
        assert (stored["key"], stored["upload_id"]) == (folder + name, upload["upload_id"])
        assert [e["code"] for e in stored["errors"]] == [code]
        assert upload["report"]["errors"] == stored["errors"]
        source_key = client.version(dataset, upload["version_id"])["source_key"]
        assert source_key == f"quarantine/{dataset}/{upload['upload_id']}/upload/{name}"
        assert object_bytes(stack, source_key) == files[folder + name]
    # AND the status route of one upload shows that file, not the folder's last
    first = client.upload_status(dataset, uploads[folder + "a.csv"]["upload_id"])
    assert (first["status"], first["report"]["file"]) == ("REJECTED", "a.csv")


def test_a_synced_folder_tree_is_one_upload_per_file_at_any_depth(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path, tmp_path: Path
) -> None:
    # GIVEN a local tree of files, as `aws s3 sync history/ s3://bucket/raw/{dataset}/`
    # copies it: one key per file, relative path kept, through the managed transfer
    assert stack.resources is not None and stack.poller is not None
    tree = ["2024/05.csv", "2024/06.csv", "2025/01/late.csv", "top.csv"]
    for path, data in zip(tree, races_in_parts(races_csv, len(tree)), strict=True):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    for path in tree:
        s3_of(stack).upload_file(
            str(tmp_path / path), stack.resources.bucket, f"raw/{dataset}/{path}"
        )
    stack.poller.drain()

    # THEN each file is a VALID version made by an upload of its own (the two files of
    # 2024/ were one upload, named "2024", before)
    versions = [client.version(dataset, v["version_id"]) for v in client.versions(dataset)]
    assert [v["status"] for v in versions] == ["VALID"] * len(tree)
    assert len({v["report"]["upload_id"] for v in versions}) == len(tree)
    # AND the dataset's uploads are those files, each with its version
    uploads = by_key(client.uploads(dataset))
    assert sorted(uploads) == sorted(f"raw/{dataset}/{path}" for path in tree)
    assert {u["status"] for u in uploads.values()} == {"VALID"}
    assert {v["report"]["key"]: v["version_id"] for v in versions} == {
        key: u["version_id"] for key, u in uploads.items()
    }


def test_new_bytes_under_the_same_key_are_a_new_upload_and_the_old_report_is_kept(
    stack: LocalStack, client: GallopClient, dataset: str, races_csv: Path
) -> None:
    # GIVEN a bad file copied to a key, then overwritten by the corrected file
    key = f"raw/{dataset}/daily/results.csv"
    bad = BAD["target-missing"].make(races_csv.read_bytes())
    copy_in(stack, {key: bad})
    copy_in(stack, {key: races_csv.read_bytes()})

    # THEN each is a version made by an upload of its own
    versions = [client.version(dataset, v["version_id"]) for v in client.versions(dataset)]
    assert sorted(v["status"] for v in versions) == ["REJECTED", "VALID"]
    assert len({v["report"]["upload_id"] for v in versions}) == 2
    # AND the key has two uploads, oldest first, one per ETag, each with its own outcome
    first, second = client.uploads(dataset, prefix=key)
    assert (first["status"], second["status"]) == ("REJECTED", "VALID")
    assert first["key"] == second["key"] == key
    assert first["etag"] != second["etag"] and first["upload_id"] != second["upload_id"]
    # AND the rejected bytes and their report are still there, under the first's own id
    quarantine = f"quarantine/{dataset}/{first['upload_id']}/"
    assert object_bytes(stack, quarantine + "upload/results.csv") == bad
    report = json.loads(object_bytes(stack, quarantine + "report.json"))
    assert report["status"] == "REJECTED" and report["upload_id"] == first["upload_id"]
    statuses = {v["version_id"]: v["status"] for v in client.versions(dataset)}
    assert statuses == {first["version_id"]: "REJECTED", second["version_id"]: "VALID"}
    # AND the same bytes announced again (SQS delivers at least once) add nothing
    assert stack.resources is not None and stack.poller is not None
    body = object_created_body(stack.resources.bucket, key, races_csv.stat().st_size)
    aws.client("sqs", stack.settings).send_message(
        QueueUrl=stack.resources.ingest.url, MessageBody=body
    )
    stack.poller.drain()
    assert [u["upload_id"] for u in client.uploads(dataset, prefix=key)] == [
        first["upload_id"],
        second["upload_id"],
    ]


def unclaimed_at(client: GallopClient, key: str) -> dict[str, Any]:
    (found,) = [u for u in client.unclaimed() if u["key"] == key]
    return found


def test_a_file_for_an_unknown_dataset_is_kept_counted_and_ingested_once_registered(
    stack: LocalStack,
    client: GallopClient,
    races_csv: Path,
    races_spec: DatasetSpec,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert stack.resources is not None and stack.poller is not None
    name = unique_name("later")
    key = f"raw/{name}/2024/races.csv"
    data = races_csv.read_bytes()
    # GIVEN a file copied under a dataset nobody has registered, handled by the ingest
    # function with its metrics on (the quiet local stack switches them off)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    with paused_poller(stack):
        s3_of(stack).put_object(Bucket=stack.resources.bucket, Key=key, Body=data)
        body = object_created_body(stack.resources.bucket, key, len(data))
        event = {"Records": [sqs_record(body, stack.resources.ingest.arn)]}
        capsys.readouterr()
        assert load_handler("ingest")(event, LocalContext("ingest")) == {"batchItemFailures": []}
        printed = capsys.readouterr().out
    stack.poller.drain()  # S3's own event for the same object: a repeat, not counted again
    assert "UnclaimedUploads" not in capsys.readouterr().out

    # THEN it is moved under unclaimed/, kept byte for byte, and listed with why
    listed = unclaimed_at(client, key)
    assert listed["unclaimed_key"] == f"unclaimed/{name}/2024/races.csv"
    assert (listed["dataset"], listed["size"]) == (name, len(data))
    assert f"no dataset named {name!r}" in listed["reason"] and listed["etag"]
    assert listed["first_seen"]
    assert keys_under(stack, f"raw/{name}/") == []
    assert object_bytes(stack, listed["unclaimed_key"]) == data
    # AND the ingest function counted it in the metric the alarm watches
    emf = [json.loads(line) for line in printed.splitlines() if "_aws" in line]
    assert [m["UnclaimedUploads"] for m in emf if "UnclaimedUploads" in m] == [[1.0]]

    # WHEN the dataset is registered
    client.register_dataset(spec_named(races_spec, name))
    stack.poller.drain()
    # THEN the file went back through raw/ and the ingest queue, and is a VALID upload
    (upload,) = client.uploads(name)
    assert (upload["key"], upload["status"]) == (key, "VALID")
    assert key not in {u["key"] for u in client.unclaimed()}
    assert keys_under(stack, f"unclaimed/{name}/") == []


def test_retrying_an_unclaimed_upload(
    stack: LocalStack, client: GallopClient, races_csv: Path, races_spec: DatasetSpec
) -> None:
    assert stack.settings is not None
    name = unique_name("retry")
    key = f"raw/{name}/races.csv"
    shapeless = [f"raw/{unique_name('file')}.csv", f"raw/{unique_name('folder')}/"]
    copy_in(stack, {key: races_csv.read_bytes(), **{k: b"" for k in shapeless}})

    # An id that was never handed out
    with pytest.raises(ApiError) as unknown:
        client.retry_unclaimed("k-0000")
    assert unknown.value.status_code == 404 and "no unclaimed upload" in str(unknown.value)

    # A dataset that still does not exist
    waiting = unclaimed_at(client, key)
    with pytest.raises(ApiError) as early:
        client.retry_unclaimed(waiting["id"])
    assert early.value.status_code == 409 and f"no dataset named {name!r}" in str(early.value)

    # Keys that name no dataset stay listed with their reason, and can never be claimed
    for shape in shapeless:
        listed = unclaimed_at(client, shape)
        assert listed["dataset"] is None and "names no file of a dataset" in listed["reason"]
        with pytest.raises(ApiError) as never:
            client.retry_unclaimed(listed["id"])
        assert never.value.status_code == 409 and "can never be claimed" in str(never.value)
    folder = unclaimed_at(client, shapeless[1])
    assert folder["unclaimed_key"] == shapeless[1].replace("raw/", "unclaimed/", 1)
    assert object_bytes(stack, folder["unclaimed_key"]) == b""

    # GIVEN the dataset registered where nothing claims its files (another process, or
    # an S3 failure halfway through the claim) WHEN the file is retried
    repo.register_dataset(engine_for(stack.settings.sqlalchemy_url), spec_named(races_spec, name))
    retried = client.retry_unclaimed(waiting["id"])
    assert retried["key"] == key
    stack.poller.drain()  # type: ignore[union-attr]
    # THEN it is ingested, and no longer unclaimed
    (upload,) = client.uploads(name)
    assert (upload["key"], upload["status"]) == (key, "VALID")
    with pytest.raises(ApiError) as gone:
        client.retry_unclaimed(waiting["id"])
    assert gone.value.status_code == 404
