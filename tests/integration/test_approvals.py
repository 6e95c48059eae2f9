"""Approval requests through the real app and the metadata store (SQLite and Postgres):
approve promotes in the request's transaction, and every refusal (twice, rejected,
expired, the champion moved since, unknown) is a 4xx that changes nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from sqlalchemy import Engine

from gallop.api.app import create_app
from gallop.metadata import repo
from gallop.metadata.models import Dataset
from gallop.renewal import approvals
from gallop.renewal.approvals import ApprovalConflict, state_machine_event
from gallop.serving.registry import aliases_of, history, promote
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.training.config import run_config
from tests.conftest import registered_model, spec_named, unique_name

KEY = "test-key-123"


def add_model(
    engine: Engine, artifacts: Store, dataset: Dataset, run_id: str, version: str = "v-1"
) -> str:
    """A registered model whose files are there (promotion checks them), from a small
    run's configuration on `version` (what a retrain of it copies)."""
    small = run_config(
        dataset.name, "ranking", ["lambdarank"], {"num_boost_round": 10, "folds": 2}, 0.2
    )
    return registered_model(engine, dataset, run_id, version=version, config=small, files=artifacts)


@pytest.fixture()
def world(
    engine: Engine, races_spec: DatasetSpec, tmp_path: Path
) -> Iterator[tuple[TestClient, Engine, Store, Settings, Dataset, str, str]]:
    """A dataset with a champion and a challenger, and the app over the same store."""
    settings = Settings(
        state_dir=tmp_path,
        api_keys=f"lead:reader+writer+approver:{KEY}",
        artifacts_bucket="artifacts",
        database_url=str(engine.url.render_as_string(hide_password=False)),
    )
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        artifacts = Store("artifacts", s3)
        dataset, _ = repo.register_dataset(engine, spec_named(races_spec, unique_name("ap")))
        champion = add_model(engine, artifacts, dataset, uuid.uuid4().hex)
        challenger = add_model(engine, artifacts, dataset, uuid.uuid4().hex)
        promote(engine, artifacts, champion, "champion", actor="test")
        promote(engine, artifacts, challenger, "challenger", actor="test")
        app = create_app(settings, engine=engine, artifacts=artifacts)
        with TestClient(app, headers={"x-api-key": KEY}) as api:
            yield api, engine, artifacts, settings, dataset, champion, challenger


def comparison(dataset: Dataset, champion: str, challenger: str) -> dict:
    return {
        "dataset": dataset.name,
        "champion": champion,
        "challenger": challenger,
        "recommendation": "promote",
        "reason": "race_log_loss better, interval entirely above zero",
        "metrics": [],
    }


def test_approve_promotes_the_challenger_once_and_twice_is_a_409(world) -> None:  # type: ignore[no-untyped-def]
    api, engine, _, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    # a second request while one is PENDING is not opened
    assert (
        approvals.open_approval(
            engine, settings, dataset.id, comparison(dataset, champion, challenger)
        )
        is None
    )

    listed = api.get("/v1/approvals", params={"dataset": dataset.name, "status": "PENDING"})
    assert [a["approval_id"] for a in listed.json()["items"]] == [opened.approval_id]
    seen = api.get(f"/v1/datasets/{dataset.name}/challenger").json()
    assert seen["approval"]["approval_id"] == opened.approval_id
    assert (seen["champion"], seen["challenger"]) == (champion, challenger)

    # WHEN it is approved
    reply = api.post(
        f"/v1/approvals/{opened.approval_id}", json={"decision": "approve", "reason": "clear"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "APPROVED" and reply.json()["decided_by"] == "lead"
    # THEN the challenger is the champion (and no longer the challenger), with history
    # lines naming the request
    assert aliases_of(engine, dataset.id) == {"champion": challenger}
    lines, _ = history(engine, dataset.id, 10)
    assert (lines[0].action, lines[0].from_model, lines[0].to_model) == (
        "approve",
        champion,
        challenger,
    )
    assert lines[0].approval_id == opened.approval_id and lines[0].reason == "clear"
    assert (lines[1].alias, lines[1].from_model, lines[1].to_model) == (
        "challenger",
        challenger,
        None,
    )
    assert lines[1].approval_id == opened.approval_id

    # approving again changes nothing
    again = api.post(f"/v1/approvals/{opened.approval_id}", json={"decision": "approve"})
    assert again.status_code == 409
    assert "already APPROVED by lead" in again.json()["detail"]
    assert len(history(engine, dataset.id, 10)[0]) == len(lines)


def test_reject_keeps_the_champion_and_a_rejected_request_cannot_be_approved(world) -> None:  # type: ignore[no-untyped-def]
    api, engine, _, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    reply = api.post(
        f"/v1/approvals/{opened.approval_id}", json={"decision": "reject", "reason": "not now"}
    )
    assert reply.status_code == 200 and reply.json()["status"] == "REJECTED"
    assert aliases_of(engine, dataset.id)["champion"] == champion
    line = history(engine, dataset.id, 1)[0][0]
    assert (line.action, line.to_model, line.reason) == ("reject", champion, "not now")

    late = api.post(f"/v1/approvals/{opened.approval_id}", json={"decision": "approve"})
    assert late.status_code == 409 and "already REJECTED" in late.json()["detail"]
    assert aliases_of(engine, dataset.id)["champion"] == champion


def test_a_request_past_its_time_expires_and_the_champion_stays(world) -> None:  # type: ignore[no-untyped-def]
    api, engine, _, settings, dataset, champion, challenger = world
    long_ago = datetime.now(UTC) - timedelta(hours=settings.approval_timeout_hours + 1)
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger), now=long_ago
    )
    assert opened is not None
    # WHEN someone approves it after its time
    reply = api.post(f"/v1/approvals/{opened.approval_id}", json={"decision": "approve"})
    # THEN it has expired (by the approval timeout), the champion stays
    assert reply.status_code == 409
    assert "already EXPIRED by approval timeout" in reply.json()["detail"]
    assert aliases_of(engine, dataset.id)["champion"] == champion
    line = history(engine, dataset.id, 1)[0][0]
    assert (line.action, line.actor, line.approval_id) == (
        "expire",
        "approval timeout",
        opened.approval_id,
    )
    assert api.get(f"/v1/approvals/{opened.approval_id}").json()["status"] == "EXPIRED"


def test_the_state_machines_timeout_expires_a_pending_request(world) -> None:  # type: ignore[no-untyped-def]
    _, engine, _, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    # the state machine hands over its token, then its timeout fires
    waiting = {"renewal": "await", "approval_id": opened.approval_id, "task_token": "tok-1"}
    assert state_machine_event(settings, waiting)["status"] == "PENDING"
    assert approvals.get_approval(engine, opened.approval_id).task_token == "tok-1"
    expired = state_machine_event(
        settings, {"renewal": "expire", "approval_id": opened.approval_id}
    )
    assert expired["status"] == "EXPIRED"
    assert aliases_of(engine, dataset.id)["champion"] == champion
    with pytest.raises(ValueError, match="unknown renewal event"):
        state_machine_event(settings, {"renewal": "wait", "approval_id": opened.approval_id})


def test_approving_after_the_champion_moved_is_a_409(world) -> None:  # type: ignore[no-untyped-def]
    api, engine, artifacts, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    # GIVEN a person promoted another model meanwhile
    other = add_model(engine, artifacts, dataset, uuid.uuid4().hex)
    promote(engine, artifacts, other, "champion", actor="someone")
    reply = api.post(f"/v1/approvals/{opened.approval_id}", json={"decision": "approve"})
    assert reply.status_code == 409
    assert (
        f"the champion moved since approval request {opened.approval_id}" in reply.json()["detail"]
    )
    assert aliases_of(engine, dataset.id)["champion"] == other
    assert approvals.get_approval(engine, opened.approval_id).status == "PENDING"


def test_a_stored_token_is_told_and_a_failure_to_tell_is_logged_not_raised(
    world,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    _, engine, artifacts, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    approvals.await_token(engine, settings, opened.approval_id, "a-token")
    # GIVEN Step Functions cannot be reached
    unreachable = settings.model_copy(update={"aws_endpoint_url": "http://127.0.0.1:9"})
    with caplog.at_level(logging.ERROR, logger="gallop.renewal.notify"):
        decided = approvals.decide(
            engine, artifacts, unreachable, opened.approval_id, "approve", actor="approver-1"
        )
    # THEN the approval stands, and the failure is logged
    assert decided.status == "APPROVED"
    assert aliases_of(engine, dataset.id)["champion"] == challenger
    assert "could not tell the renewal state machine" in caplog.text


def test_unknown_requests_and_bad_decisions_are_4xx(world) -> None:  # type: ignore[no-untyped-def]
    api, *_ = world
    missing = "ap-" + "0" * 20
    assert api.get(f"/v1/approvals/{missing}").status_code == 404
    reply = api.post(f"/v1/approvals/{missing}", json={"decision": "approve"})
    assert reply.status_code == 404 and missing in reply.json()["detail"]
    assert api.post(f"/v1/approvals/{missing}", json={"decision": "maybe"}).status_code == 422
    assert api.get("/v1/approvals", params={"dataset": "no-such"}).status_code == 404


def test_conflicts_are_a_specific_error_in_the_library(world) -> None:  # type: ignore[no-untyped-def]
    _, engine, artifacts, settings, dataset, champion, challenger = world
    opened = approvals.open_approval(
        engine, settings, dataset.id, comparison(dataset, champion, challenger)
    )
    assert opened is not None
    approvals.decide(engine, artifacts, settings, opened.approval_id, "reject", actor="a")
    with pytest.raises(ApprovalConflict):
        approvals.decide(engine, artifacts, settings, opened.approval_id, "reject", actor="a")
