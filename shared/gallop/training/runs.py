"""Training runs and the model registry: rows in training_runs and models.

A run moves PENDING → RUNNING → SUCCEEDED | FAILED. It becomes SUCCEEDED in the same
transaction that registers its model, so a model exists exactly for the runs that
succeeded; a FAILED run has a reason and no model, and may be started again.
Only boto3 (through Store), SQLAlchemy and the standard library: the register Lambda
imports this.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError

from gallop.metadata.db import session_scope
from gallop.metadata.models import RegisteredModel, RunStatus, TrainingRun
from gallop.storage import Store
from gallop.training.artifacts import MANIFEST, ONNX, REPORT, TARBALL

LOCAL_EXECUTION = "local"
INTERRUPTED = "interrupted: the local stack stopped before the run finished; POST it again"


class RunNotFound(LookupError):
    pass


class ArtifactMismatch(ValueError):
    """The model under a run's prefix was not made by that run."""


def get_run(engine: Engine, run_id: str) -> TrainingRun:
    with session_scope(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run


def find_model(engine: Engine, run_id: str) -> RegisteredModel | None:
    with session_scope(engine) as session:
        return session.scalar(select(RegisteredModel).where(RegisteredModel.run_id == run_id))


def start_run(engine: Engine, **fields: Any) -> tuple[TrainingRun, bool]:
    """A new PENDING run; or the existing one with that id, as it is, unless it FAILED:
    then it starts again as the next attempt. Returns (run, started)."""
    run_id = fields["run_id"]
    try:
        with session_scope(engine) as session:
            existing = session.get(TrainingRun, run_id)
            if existing is None:
                session.add(
                    TrainingRun(status=RunStatus.PENDING.value, attempt=1, stage="queued", **fields)
                )
    except IntegrityError:  # the same run asked for twice at once: the other one won
        return get_run(engine, run_id), False
    if existing is None:
        return get_run(engine, run_id), True
    if existing.status != RunStatus.FAILED.value:
        return existing, False
    restarted = _restart(engine, existing)
    return get_run(engine, run_id), restarted


def _restart(engine: Engine, failed: TrainingRun) -> bool:
    """FAILED → PENDING as the next attempt; False if another request restarted it first."""
    with session_scope(engine) as session:
        done = session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.run_id == failed.run_id,
                TrainingRun.status == RunStatus.FAILED.value,
                TrainingRun.attempt == failed.attempt,
            )
            .values(
                status=RunStatus.PENDING.value,
                attempt=failed.attempt + 1,
                stage="queued",
                reason=None,
                metrics=None,
                execution=None,
            )
        )
    return bool(done.rowcount)


def mark_running(engine: Engine, run_id: str, execution: str, stage: str) -> None:
    _update(
        engine,
        run_id,
        (RunStatus.PENDING, RunStatus.RUNNING),
        status=RunStatus.RUNNING.value,
        execution=execution,
        stage=stage,
    )


def set_execution(engine: Engine, run_id: str, execution: str) -> None:
    _update(engine, run_id, (RunStatus.PENDING,), execution=execution)


def set_stage(engine: Engine, run_id: str, stage: str) -> None:
    _update(engine, run_id, (RunStatus.RUNNING,), stage=stage)


def mark_run_failed(engine: Engine, run_id: str, reason: str) -> TrainingRun:
    """FAILED with the reason. A run that already SUCCEEDED keeps its model and status."""
    get_run(engine, run_id)  # an unknown run is an error, not a silent no-op
    _update(
        engine,
        run_id,
        (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.FAILED),
        status=RunStatus.FAILED.value,
        reason=reason,
    )
    return get_run(engine, run_id)


def _update(engine: Engine, run_id: str, when: tuple[RunStatus, ...], **values: Any) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.run_id == run_id, TrainingRun.status.in_([s.value for s in when]))
            .values(**values)
        )


def fail_interrupted_runs(engine: Engine) -> int:
    """Local runs that were queued or training when their process died never finish:
    say so, so that they can be started again."""
    with session_scope(engine) as session:
        done = session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                or_(TrainingRun.execution.is_(None), TrainingRun.execution == LOCAL_EXECUTION),
            )
            .values(status=RunStatus.FAILED.value, reason=INTERRUPTED)
        )
    return int(done.rowcount)


def register_model(engine: Engine, store: Store, run_id: str, model_prefix: str) -> RegisteredModel:
    """Register the model stored under model_prefix (in the artifacts bucket) as the run's,
    and mark the run SUCCEEDED with the stack's metrics, in one transaction. Registering a
    run's model again returns the first registration."""
    existing = find_model(engine, run_id)
    if existing is not None:
        return existing
    run = get_run(engine, run_id)
    keys = {name: model_prefix + name for name in (MANIFEST, ONNX, REPORT, TARBALL)}
    manifest = json.loads(store.get_bytes(keys[MANIFEST]))
    if manifest.get("run_id") != run_id:
        raise ArtifactMismatch(
            f"{keys[MANIFEST]} names run {manifest.get('run_id')!r}, not {run_id!r}"
        )
    for key in (keys[ONNX], keys[REPORT], keys[TARBALL]):
        store.head(key)  # ObjectMissing: nothing is registered that cannot be served
    model = RegisteredModel(
        model_id=model_id_for(run_id),
        run_id=run_id,
        dataset_id=run.dataset_id,
        task=manifest["task"],
        artifact_key=keys[TARBALL],
        onnx_key=keys[ONNX],
        manifest_key=keys[MANIFEST],
        report_key=keys[REPORT],
        manifest=manifest,
    )
    try:
        with session_scope(engine) as session:
            session.add(model)
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.run_id == run_id)
                .values(
                    status=RunStatus.SUCCEEDED.value,
                    stage="model registered",
                    reason=None,
                    metrics=(manifest.get("metrics") or {}).get("stack"),
                )
            )
    except IntegrityError:  # registered concurrently (a retried Lambda invocation)
        found = find_model(engine, run_id)
        if found is None:
            raise
        return found
    return model


def model_id_for(run_id: str) -> str:
    return f"m-{run_id}"
