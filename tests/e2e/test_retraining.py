"""A retraining policy through the local stack: its schedule fires once per period; a
retrain that fails (its launch cannot start) leaves champion and challenger as they were,
records why and does not start again on its own; the next period's retrain succeeds and
its model becomes the challenger, never the champion. Then the approval flow over HTTP:
an approver key's approval makes the challenger the champion."""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from gallop.client import GallopClient
from gallop.local.stack import LocalStack
from gallop.metadata import repo
from gallop.metadata.db import engine_for, session_scope
from gallop.metadata.models import RetrainingPolicy, TrainingRun
from gallop.monitoring.run import Monitor
from gallop.renewal import approvals
from gallop.renewal.outcome import FAILED, RUNNING, SUCCEEDED
from gallop.serving.registry import aliases_of, history, promote
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.launchers import StepFunctionsLauncher
from tests.conftest import spec_named, unique_name
from tests.e2e.test_features_e2e import ingest
from tests.integration.test_approvals import add_model


def _policy(engine: Any, dataset_id: int) -> RetrainingPolicy:
    with session_scope(engine) as session:
        policy = session.get(RetrainingPolicy, dataset_id)
        assert policy is not None
        return policy


def _wait_settled(engine: Any, dataset_id: int, timeout: float = 600) -> RetrainingPolicy:
    deadline = time.monotonic() + timeout
    while (policy := _policy(engine, dataset_id)).last_outcome == RUNNING:
        assert time.monotonic() < deadline, f"the retrain still runs after {timeout} s"
        time.sleep(0.5)
    return policy


def test_a_failed_retrain_changes_nothing_and_the_next_period_makes_a_challenger(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    assert stack.settings is not None
    settings = stack.settings
    engine = engine_for(settings.sqlalchemy_url)
    artifacts = Store.artifacts_from_settings(settings)
    # GIVEN a champion of 80 races (its run's configuration is what a retrain copies; its
    # own files need not serve here), and a policy retraining every 24 hours
    runners, _ = generate_races(80, seed=7)
    spec = spec_named(races_spec, unique_name("renew"))
    version = ingest(client, spec, runners.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, version, timeout=120)["status"] == "READY"
    dataset = repo.get_dataset(engine, spec.name)
    dataset_id = dataset.id
    champion = add_model(engine, artifacts, dataset, uuid.uuid4().hex, version=version)
    promote(engine, artifacts, champion, "champion", actor="test")
    set_at = datetime.now(UTC)
    with session_scope(engine) as session:
        session.add(
            RetrainingPolicy(
                dataset_id=dataset_id,
                every_hours=24,
                time_limit=20,  # a configuration of its own: not the champion's run
                updated_by="test",
                updated_at=set_at,
            )
        )

    # WHEN the first period ends and the run cannot start
    gone = settings.model_copy(
        update={
            "training_launcher": "stepfunctions",
            "training_state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:gone",
        }
    )
    day1 = set_at + timedelta(hours=25)
    failing = Monitor(
        settings, now=day1, metrics_out=io.StringIO(), launcher=StepFunctionsLauncher(gone, engine)
    )
    failing.run(spec.name, scheduled=True)

    # THEN the policy records why, the aliases are as they were, and a history line says so
    policy = _policy(engine, dataset_id)
    assert policy.last_outcome == FAILED and policy.last_trigger == "schedule"
    assert "could not start" in str(policy.last_reason)
    assert aliases_of(engine, dataset_id) == {"champion": champion}
    line = history(engine, dataset_id, 1)[0][0]
    assert (line.action, line.actor) == ("retrain", "retraining policy")
    assert "the retrain failed, nothing moved" in str(line.reason)
    failed_run = policy.last_run_id
    # and the same period does not try again (no loop)
    again = Monitor(
        settings,
        now=day1 + timedelta(hours=1),
        metrics_out=io.StringIO(),
        launcher=StepFunctionsLauncher(gone, engine),
    )
    again.run(spec.name, scheduled=True)
    assert again.renewals[0]["retraining"]["said"] == "no trigger is due"
    with session_scope(engine) as session:
        attempt = session.get(TrainingRun, failed_run)
        assert attempt is not None and attempt.attempt == 1

    # WHEN the next period ends, with a launcher that trains
    day2 = day1 + timedelta(hours=25)
    Monitor(settings, now=day2, metrics_out=io.StringIO()).run(spec.name, scheduled=True)
    policy = _wait_settled(engine, dataset_id)

    # THEN the retrained model is the challenger; the champion stays
    assert policy.last_outcome == SUCCEEDED, policy.last_reason
    aliases = aliases_of(engine, dataset_id)
    assert aliases["champion"] == champion
    challenger = aliases["challenger"]
    assert challenger != champion and challenger == f"m-{policy.last_run_id}"
    line = history(engine, dataset_id, 1)[0][0]
    assert (line.action, line.to_model, line.actor) == ("retrain", challenger, "retraining policy")

    # WHEN a comparison recommends it, a request opens, and an approver approves it
    compared = {"dataset": spec.name, "champion": champion, "challenger": challenger}
    opened = approvals.open_approval(
        engine, settings, dataset_id, compared | {"recommendation": "promote"}
    )
    assert opened is not None
    decided = client.decide(opened.approval_id, "approve", reason="better on live races")
    assert decided["status"] == "APPROVED"
    assert aliases_of(engine, dataset_id)["champion"] == challenger
    assert client.approvals(spec.name)[0]["approval_id"] == opened.approval_id
