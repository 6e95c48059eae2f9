"""The local stack keeps its state across restarts, and owns its state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gallop import aws
from gallop.client import GallopClient
from gallop.local.stack import (
    LocalStack,
    StateDirBusy,
    api_key_for,
    free_port,
    running_endpoints,
)
from gallop.settings import Settings
from gallop.spec import DatasetSpec


def _up(state: Path, fresh: bool = False) -> tuple[LocalStack, GallopClient]:
    stack = LocalStack(state, quiet=True, fresh=fresh).start()
    return stack, GallopClient(stack.serve_api(free_port()), stack.api_key)


def test_state_survives_a_restart_and_fresh_starts_empty(
    tmp_path: Path, races_csv: Path, races_spec: DatasetSpec
) -> None:
    # GIVEN data ingested yesterday
    stack, client = _up(tmp_path)
    try:
        client.register_dataset(races_spec)
        upload_id = client.upload_file(races_spec.name, races_csv)
        version_id = client.wait_for_upload(races_spec.name, upload_id, timeout=60)["version_id"]
        data_key = client.version(races_spec.name, version_id)["data_key"]
        key = stack.api_key
    finally:
        client.close()
        stack.stop()

    # WHEN the stack starts again THEN the version, its objects and the API key are there
    stack, client = _up(tmp_path)
    try:
        assert stack.api_key == key
        assert [v["version_id"] for v in client.versions(races_spec.name)] == [version_id]
        s3 = aws.client("s3", stack.settings)
        body = s3.get_object(Bucket=stack.settings.data_bucket, Key=data_key)["Body"].read()  # type: ignore[union-attr]
        assert body[:4] == b"PAR1"
        # and a re-upload of the same file is still recognised as the same version
        again = client.upload_file(races_spec.name, races_csv)
        assert (
            client.wait_for_upload(races_spec.name, again, timeout=60)["version_id"] == version_id
        )
    finally:
        client.close()
        stack.stop()

    # WHEN started with --fresh THEN nothing is left
    stack, client = _up(tmp_path, fresh=True)
    try:
        assert client.datasets() == []
        s3 = aws.client("s3", stack.settings)
        assert s3.list_objects_v2(Bucket=stack.settings.data_bucket).get("KeyCount") == 0  # type: ignore[union-attr]
    finally:
        client.close()
        stack.stop()


def test_uploads_left_unsettled_at_shutdown_are_ingested_on_restart(
    tmp_path: Path, races_csv: Path, races_spec: DatasetSpec
) -> None:
    stack, client = _up(tmp_path)
    try:
        client.register_dataset(races_spec)
        assert stack.poller is not None
        stack.poller.stop()  # the stack goes down before the upload is processed
        upload_id = client.upload_file(races_spec.name, races_csv)
        assert client.upload_status(races_spec.name, upload_id)["status"] == "PENDING"
    finally:
        client.close()
        stack.stop()

    stack, client = _up(tmp_path)
    try:
        status = client.wait_for_upload(races_spec.name, upload_id, timeout=60)
        assert status["status"] == "VALID"
    finally:
        client.close()
        stack.stop()


def test_every_file_holding_the_api_key_is_its_owners_alone(tmp_path: Path) -> None:
    # GIVEN an endpoints file left readable by an older version
    (tmp_path / "endpoints.json").write_text("{}")
    (tmp_path / "endpoints.json").chmod(0o644)
    stack, client = _up(tmp_path)
    try:
        # WHEN the stack serves THEN each file under the state dir with the key is 0600
        holding = [
            path
            for path in tmp_path.rglob("*")
            if path.is_file() and stack.api_key.encode() in path.read_bytes()
        ]
        assert {p.name for p in holding} >= {"api_key", "endpoints.json"}
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in holding} == {
            p.name: "0o600" for p in holding
        }
    finally:
        client.close()
        stack.stop()


def test_one_stack_per_state_directory(tmp_path: Path) -> None:
    stack, client = _up(tmp_path)
    try:
        with pytest.raises(StateDirBusy, match="in use"):
            LocalStack(tmp_path, quiet=True).start()
        running = running_endpoints(tmp_path)
        assert running == {"api_url": stack.api_url, "api_key": stack.api_key}
    finally:
        client.close()
        stack.stop()
    assert running_endpoints(tmp_path) is None


def test_the_disk_mirror_never_writes_outside_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack = LocalStack(state, quiet=True).start()
    try:
        assert stack.settings is not None
        s3 = aws.client("s3", stack.settings)
        for key in ("../../escape.txt", "/etc-like.txt", "ok/inside.txt"):
            s3.put_object(Bucket=stack.settings.data_bucket, Key=key, Body=b"x")
        stored = {
            o["Key"] for o in s3.list_objects_v2(Bucket=stack.settings.data_bucket)["Contents"]
        }
        assert "../../escape.txt" in stored  # S3 itself accepts such keys
    finally:
        stack.stop()
    assert not (tmp_path / "escape.txt").exists()
    assert not any(p.name == "escape.txt" for p in tmp_path.rglob("*"))
    assert (state / "s3" / "gallop-data" / "ok" / "inside.txt").read_bytes() == b"x"


def test_runs_left_training_by_a_stopped_stack_are_failed_on_restart(
    tmp_path: Path, races_spec: DatasetSpec
) -> None:
    from gallop.metadata import repo
    from gallop.metadata.db import engine_for
    from gallop.training import runs
    from gallop.training.config import run_config

    # GIVEN a run that was training when the stack went down
    stack = LocalStack(tmp_path, quiet=True).start()
    try:
        assert stack.settings is not None
        engine = engine_for(stack.settings.sqlalchemy_url)
        dataset, _ = repo.register_dataset(engine, races_spec)
        run, _ = runs.start_run(
            engine,
            run_id="0f" * 10,
            dataset_id=dataset.id,
            version_id="v-1",
            spec_hash=dataset.spec_hash,
            code_version="c0de",
            config=run_config(dataset.name, "ranking", None, {}, 0.2),
        )
        runs.mark_running(engine, run.run_id, runs.LOCAL_EXECUTION, "base 1/3 done")
    finally:
        stack.stop()

    # WHEN the stack starts again THEN the run is FAILED as interrupted, and may be restarted
    stack, client = _up(tmp_path)
    try:
        failed = client.training_run("0f" * 10)
        assert failed["status"] == "FAILED" and failed["reason"].startswith("interrupted")
    finally:
        client.close()
        stack.stop()


def test_the_local_key_has_every_role_and_a_test_may_ask_for_narrower_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keys the stack would serve with (its start sets GALLOP_API_KEYS to this); the
    # roles' effect on the routes is tests/integration/test_roles.py's.
    monkeypatch.delenv("GALLOP_API_KEYS", raising=False)
    stack = LocalStack(tmp_path, role_keys={"viewer": "reader", "ci": "writer"})
    stack.api_key = api_key_for(tmp_path)
    keys = Settings(api_keys=stack.api_keys_setting()).api_key_entries
    assert {k.name: (sorted(k.roles), k.secret) for k in keys} == {
        # gallop serve's key (the demo's, the CLI's): it promotes and approves
        "local": (["approver", "reader", "writer"], stack.api_key),
        "viewer": (["reader"], stack.api_keys["viewer"]),
        "ci": (["reader", "writer"], stack.api_keys["ci"]),
    }
