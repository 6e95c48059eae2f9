"""kill -9 at the worst moments leaves nothing half-done in the local stack: `gallop serve`
runs in a subprocess and ends itself (GALLOP_TEST_CRASH_AT, os._exit(137)) right after
metadata commits; the stack started again finds every object that metadata names, and
mends what an older state directory lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gallop import aws
from gallop.client import ApiError, GallopClient
from gallop.crashpoint import (
    ENV_TEST_CRASH_AT,
    MODEL_REGISTERED,
    READING_UPLOAD,
    VERSION_RECORDED,
)
from gallop.ingest.formats import format_of
from gallop.local.stack import free_port, running_endpoints
from gallop.settings import MAX_RECEIVE_COUNT
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from tests.integration.test_local_stack import _up

GALLOP = Path(sys.executable).with_name("gallop")
SMALL = {"num_boost_round": 10, "folds": 2}
ONE_BASE = ["lambdarank"]  # one base job: the stack job still runs, in seconds


def _serve_until_crash(state: Path, crash_at: str) -> tuple[subprocess.Popen[bytes], GallopClient]:
    """`gallop serve` on the state directory, set to crash at `crash_at`."""
    server = subprocess.Popen(
        [str(GALLOP), "serve", "--state-dir", str(state), "--port", str(free_port())],
        env={**os.environ, ENV_TEST_CRASH_AT: crash_at},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while (endpoints := running_endpoints(state)) is None or not _healthy(endpoints):
        assert server.poll() is None and time.monotonic() < deadline, "gallop serve did not start"
        time.sleep(0.1)
    return server, GallopClient(endpoints["api_url"], endpoints["api_key"])


def _healthy(endpoints: dict[str, str]) -> bool:
    client = GallopClient(endpoints["api_url"], endpoints["api_key"], timeout=2)
    try:
        client.health()
        return True
    except Exception:  # not listening yet
        return False
    finally:
        client.close()


def _upload_into_crash(client: GallopClient, dataset: str, path: Path) -> str:
    """Upload a file the stack will crash on. The crash can come before storage's reply to
    the POST is flushed (the object stored, its notification already read), so a dropped
    connection there is part of the crash, not a failed upload."""
    upload = client.create_upload(dataset, format_of(path.name))
    try:
        stored = httpx.post(
            upload["url"],
            data=upload["fields"],
            files={"file": (path.name, path.read_bytes())},
            timeout=300,
        )
        assert stored.status_code < 300, stored.text
    except httpx.RemoteProtocolError:
        pass
    return str(upload["upload_id"])


def _crashed(server: subprocess.Popen[bytes], client: GallopClient) -> int:
    client.close()
    try:
        return server.wait(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()


def test_a_crash_right_after_a_version_commits_leaves_its_data_and_features_follow(
    tmp_path: Path, races_csv: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN gallop serve killed the moment an upload's VALID version commits
    server, client = _serve_until_crash(tmp_path, VERSION_RECORDED)
    client.register_dataset(races_spec)
    _upload_into_crash(client, races_spec.name, races_csv)
    assert _crashed(server, client) == 137

    # WHEN it starts again THEN the version's data is there, and its features get built
    stack, client = _up(tmp_path)
    try:
        [version] = client.versions(races_spec.name)
        assert version["status"] == "VALID"
        data_key = client.version(races_spec.name, version["version_id"])["data_key"]
        data = Store.from_settings(stack.settings).get_bytes(data_key)
        assert data[:4] == b"PAR1"
        built = client.wait_for_features(races_spec.name, version["version_id"], timeout=120)
        assert built["status"] == "READY"
    finally:
        client.close()
        stack.stop()


def test_a_crash_right_after_a_model_registers_leaves_it_whole_and_a_lost_model_trains_again(
    tmp_path: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN gallop serve killed the moment a trained model's registration commits
    server, client = _serve_until_crash(tmp_path, MODEL_REGISTERED)
    runners, _ = generate_races(150, seed=5)
    client.register_dataset(races_spec)
    upload_id = client.upload_bytes(races_spec.name, runners.to_csv(index=False).encode(), "csv")
    version_id = client.wait_for_upload(races_spec.name, upload_id, timeout=60)["version_id"]
    assert client.wait_for_features(races_spec.name, version_id, timeout=120)["status"] == "READY"
    run_id = client.start_training_run(races_spec.name, bases=ONE_BASE, hyperparameters=SMALL)[
        "run_id"
    ]
    assert _crashed(server, client) == 137

    # WHEN it starts again THEN the run SUCCEEDED with every file of its model on disk
    stack, client = _up(tmp_path)
    try:
        run = client.training_run(run_id)
        assert run["status"] == "SUCCEEDED"
        model = run["model"]
        artifacts = Store.artifacts_from_settings(stack.settings)
        for key in ("onnx_key", "manifest_key", "report_key", "artifact_key"):
            artifacts.head(model[key])
        assert client.promote(model["model_id"])["model_id"] == model["model_id"]
    finally:
        client.close()
        stack.stop()

    # GIVEN the model's ONNX file lost, as the old once-a-second mirror could lose it
    (tmp_path / "s3" / "gallop-artifacts" / model["onnx_key"]).unlink()

    # WHEN the stack starts again THEN the model is unregistered, its alias answers 404
    stack, client = _up(tmp_path)
    try:
        failed = client.training_run(run_id)
        assert failed["status"] == "FAILED" and failed["model"] is None
        assert "model.onnx" in failed["reason"] and "POST the run again" in failed["reason"]
        with pytest.raises(ApiError) as refused:
            client.predict("champion", rows=[{"x": 1.0}])
        assert refused.value.status_code == 404
        assert "no dataset has a champion yet" in str(refused.value)
        with pytest.raises(ApiError) as gone:
            client.promote(model["model_id"])
        assert gone.value.status_code == 404

        # AND posting the run again trains it again
        again = client.start_training_run(races_spec.name, bases=ONE_BASE, hyperparameters=SMALL)
        assert again["run_id"] == run_id and again["attempt"] == 2
        assert client.wait_for_training_run(run_id, timeout=300)["status"] == "SUCCEEDED"
        s3 = aws.client("s3", stack.settings)
        s3.head_object(Bucket=stack.settings.artifacts_bucket, Key=model["onnx_key"])  # type: ignore[union-attr]
    finally:
        client.close()
        stack.stop()


def test_a_version_whose_data_was_lost_is_ingested_again_from_its_upload(
    tmp_path: Path, races_csv: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN a VALID version whose data.parquet a crash of the old mirror lost
    stack, client = _up(tmp_path)
    try:
        client.register_dataset(races_spec)
        upload_id = client.upload_file(races_spec.name, races_csv)
        version_id = client.wait_for_upload(races_spec.name, upload_id, timeout=60)["version_id"]
        data_key = client.version(races_spec.name, version_id)["data_key"]
    finally:
        client.close()
        stack.stop()
    (tmp_path / "s3" / "gallop-data" / data_key).unlink()

    # WHEN the stack starts again THEN the upload is ingested again: same version, data back
    stack, client = _up(tmp_path)
    try:
        status = client.wait_for_upload(races_spec.name, upload_id, timeout=60)
        assert status["status"] == "VALID" and status["version_id"] == version_id
        assert Store.from_settings(stack.settings).get_bytes(data_key)[:4] == b"PAR1"
        built = client.wait_for_features(races_spec.name, version_id, timeout=120)
        assert built["status"] == "READY"
    finally:
        client.close()
        stack.stop()


def test_an_upload_that_ends_the_process_at_every_start_is_answered_not_resent_for_ever(
    tmp_path: Path, races_csv: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN an upload whose ingestion ends gallop serve (as one past every limit could)
    server, client = _serve_until_crash(tmp_path, READING_UPLOAD)
    client.register_dataset(races_spec)
    upload_id = _upload_into_crash(client, races_spec.name, races_csv)
    assert _crashed(server, client) == 137
    # WHEN each start re-sends it, and it ends the process again, as often as SQS would
    # deliver it before its dead-letter queue
    for _ in range(MAX_RECEIVE_COUNT):
        restarted = subprocess.run(
            [str(GALLOP), "serve", "--state-dir", str(tmp_path), "--port", str(free_port())],
            env={**os.environ, ENV_TEST_CRASH_AT: READING_UPLOAD},
            capture_output=True,
            timeout=120,
        )
        assert restarted.returncode == 137
    # THEN the next start answers it, REJECTED with an internal error, the file kept
    server, client = _serve_until_crash(tmp_path, READING_UPLOAD)
    try:
        status = client.upload_status(races_spec.name, upload_id)
        assert status["status"] == "REJECTED"
        version = client.version(races_spec.name, status["version_id"])
        assert [e["code"] for e in version["report"]["errors"]] == ["internal_error"]
        assert f"stopped {MAX_RECEIVE_COUNT} times" in version["report"]["errors"][0]["message"]
        assert version["source_key"].startswith(f"quarantine/{races_spec.name}/{upload_id}/")
        assert server.poll() is None  # and the stack runs on
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=60)
