"""What a retraining policy does when its run ends: a SUCCEEDED run's model becomes the
dataset's challenger (never the champion); a FAILED or CANCELLED run leaves both aliases
as they were, and the policy records why. Either way the policy waits for its next
trigger: nothing here starts a run.

gallop.training.runs calls `retrain_ended` when it registers a model or fails a run (the
training function, the local launcher, a launch that could not start), and the monitor
run calls it for a policy whose run ended unseen. It is idempotent: a policy settles its
run once. Only SQLAlchemy and the registry: the training function imports this.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from gallop.metadata.db import session_scope
from gallop.metadata.models import (
    AliasAction,
    ModelAlias,
    RegisteredModel,
    RetrainingPolicy,
    RunStatus,
    TrainingRun,
)
from gallop.serving.registry import CHALLENGER

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from gallop.storage import Store

log = logging.getLogger(__name__)

ACTOR = "retraining policy"
# RetrainingPolicy.last_outcome
RUNNING, SUCCEEDED, FAILED, SKIPPED = "running", "succeeded", "failed", "skipped"


def retrain_ended(engine: Engine, artifacts: Store | None, run_id: str) -> str | None:
    """Settle the policy waiting on this run, if one is; returns its outcome (None when
    no policy waits on the run, or it has not ended)."""
    with session_scope(engine) as session:
        policy = _waiting_on(session, run_id)
        run = session.get(TrainingRun, run_id)
        if policy is None or run is None:
            return None
        if run.status == RunStatus.SUCCEEDED.value:
            model = session.scalar(select(RegisteredModel).where(RegisteredModel.run_id == run_id))
            if model is not None and artifacts is not None:
                return _make_challenger(engine, artifacts, policy.dataset_id, run, model.model_id)
            return None
        if run.status not in (RunStatus.FAILED.value, RunStatus.CANCELLED.value):
            return None
    return record_failure(engine, run_id, f"run {run_id} {run.status}: {run.reason}")


def _make_challenger(
    engine: Engine, artifacts: Store, dataset_id: int, run: TrainingRun, model_id: str
) -> str | None:
    from gallop.serving.registry import ModelUnreadable, promote

    reason = f"retrained on version {run.version_id} (run {run.run_id})"
    try:
        with session_scope(engine) as session:
            policy = _waiting_on(session, run.run_id, lock=True)
            if policy is None:  # settled by another caller meanwhile
                return SUCCEEDED
            promote(
                engine,
                artifacts,
                model_id,
                CHALLENGER,
                actor=ACTOR,
                reason=f"{policy.last_trigger} trigger: {reason}",
                action=AliasAction.RETRAIN,
                session=session,
            )
            update_policy(
                session,
                policy.dataset_id,
                last_outcome=SUCCEEDED,
                last_reason=f"model {model_id} is the challenger: {reason}",
            )
    except ModelUnreadable as exc:  # registered, but cannot serve: the aliases stay
        return record_failure(engine, run.run_id, f"model {model_id} cannot serve: {exc}")
    log.info("retraining: model %s is the challenger of dataset %s", model_id, dataset_id)
    return SUCCEEDED


def record_failure(engine: Engine, run_id: str, reason: str) -> str | None:
    """The policy waiting on the run failed with `reason`: a history line (nothing
    moved), the policy's outcome; the aliases are untouched."""
    from gallop.serving.registry import record_event

    with session_scope(engine) as session:
        policy = _waiting_on(session, run_id, lock=True)
        if policy is None:
            return None
        alias = session.get(ModelAlias, (policy.dataset_id, CHALLENGER))
        challenger = alias.model_id if alias else None
        update_policy(session, policy.dataset_id, last_outcome=FAILED, last_reason=reason)
        record_event(
            session,
            policy.dataset_id,
            CHALLENGER,
            AliasAction.RETRAIN,
            actor=ACTOR,
            reason=f"{policy.last_trigger} trigger: the retrain failed, nothing moved: {reason}",
            from_model=challenger,
            to_model=challenger,
        )
    log.warning("retraining: run %s failed: %s", run_id, reason)
    return FAILED


def _waiting_on(session: Session, run_id: str, lock: bool = False) -> RetrainingPolicy | None:
    query = select(RetrainingPolicy).where(
        RetrainingPolicy.last_run_id == run_id, RetrainingPolicy.last_outcome == RUNNING
    )
    return session.scalar(query.with_for_update() if lock else query)


def update_policy(session: Session, dataset_id: int, **values: object) -> None:
    """Record what the policy did; its updated_at stays when it was last set (by a person:
    the schedule counts from it until the policy first fires)."""
    session.execute(
        update(RetrainingPolicy)
        .where(RetrainingPolicy.dataset_id == dataset_id)
        .values(**values, updated_at=RetrainingPolicy.updated_at)
    )
