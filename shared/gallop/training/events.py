"""What the training state machine tells the training Lambda at the end of a run.

{"action": "register", "run_id", "model_artifacts": "s3://bucket/.../model.tar.gz"}:
the stack job's output is unpacked under models/{run_id}/ and registered.
{"action": "failed", "run_id", "error": {"Error", "Cause"}}: what a Step Functions Catch
hands over; the run becomes FAILED with a reason a person can read.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict, cast

from sqlalchemy import Engine

from gallop.metadata.models import RegisteredModel
from gallop.storage import Store
from gallop.training import runs
from gallop.training.artifacts import publish_tarball

MAX_REASON = 2000


class StepFunctionsError(TypedDict, total=False):
    Error: str
    Cause: str


class RegisterEvent(TypedDict):
    action: Literal["register"]
    run_id: str
    model_artifacts: str


class FailedEvent(TypedDict):
    action: Literal["failed"]
    run_id: str
    error: StepFunctionsError


class BadEvent(ValueError):
    pass


def handle(event: dict[str, Any], engine: Engine, artifacts: Store) -> dict[str, Any]:
    """Apply one event; returns the run's outcome (what the state machine records)."""
    action, run_id = event.get("action"), event.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise BadEvent(f"event has no run_id: {sorted(event)}")
    if action == "register":
        model = register(event, engine, artifacts)  # type: ignore[arg-type]
        return {"run_id": run_id, "status": "SUCCEEDED", "model_id": model.model_id}
    if action == "failed":
        error = cast(StepFunctionsError, event.get("error") or {})
        run = runs.mark_run_failed(engine, run_id, failure_reason(error))
        return {"run_id": run_id, "status": run.status, "reason": run.reason}
    raise BadEvent(f"unknown action {action!r}: expected 'register' or 'failed'")


def register(event: RegisterEvent, engine: Engine, artifacts: Store) -> RegisteredModel:
    bucket, key = parse_s3_uri(event["model_artifacts"])
    source = artifacts if bucket == artifacts.bucket else Store(bucket, artifacts.s3)
    prefix = publish_tarball(artifacts, event["run_id"], source.get_bytes(key))
    return runs.register_model(engine, artifacts, event["run_id"], prefix)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise BadEvent(f"model_artifacts {uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def failure_reason(error: StepFunctionsError) -> str:
    """SageMaker's FailureReason (inside the Cause JSON of a .sync task), a Lambda's
    errorType and errorMessage, or else the Error and Cause as they came."""
    name, cause = error.get("Error") or "Error", error.get("Cause") or ""
    try:
        detail = json.loads(cause)
    except json.JSONDecodeError:
        detail = None
    if isinstance(detail, dict) and detail.get("FailureReason"):
        job = detail.get("TrainingJobName")
        reason = f"{job}: {detail['FailureReason']}" if job else str(detail["FailureReason"])
    elif isinstance(detail, dict) and detail.get("errorMessage"):
        reason = f"{detail.get('errorType') or name}: {detail['errorMessage']}"
    else:
        reason = f"{name}: {cause}" if cause else name
    return reason[:MAX_REASON]
