"""Training runs and the model registry: rows in training_runs and models.

A run moves PENDING → RUNNING → SUCCEEDED | FAILED, or to CANCELLED on request. It
becomes SUCCEEDED in the same transaction that registers its model, so a model exists
exactly for the runs that succeeded; a FAILED or CANCELLED run has a reason and no model,
and may be started again.
Only boto3 (through Store), SQLAlchemy and the standard library: the register Lambda
imports this.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gallop.crashpoint import MODEL_REGISTERED, crash_point
from gallop.layout import MANIFEST_FILE, ONNX_FILE, REPORT_HTML_FILE, TARBALL_FILE
from gallop.manifests import ModelManifest, NotAManifest, read_model_manifest
from gallop.metadata.db import session_scope
from gallop.metadata.models import Dataset, RegisteredModel, RunStatus, TrainingRun
from gallop.serving import registry
from gallop.settings import Settings
from gallop.storage import Store
from gallop.training.identity import code_version, run_id_for

log = logging.getLogger(__name__)

LOCAL_EXECUTION = "local"
INTERRUPTED = "interrupted: the local stack stopped before the run finished; POST it again"


ENDED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
RESTARTABLE = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)
CANCELLED = "cancelled on request"
# Who unregisters a model whose files are lost, in its aliases' history.
REPAIR = "repair"


class RunNotFound(LookupError):
    pass


class RunEnded(ValueError):
    """The run already ended (SUCCEEDED, FAILED or CANCELLED): nothing to stop."""


class RunCancelled(RuntimeError):
    """The run was cancelled before its model could be registered."""


class ArtifactMismatch(ValueError):
    """The model under a run's prefix was not made by that run."""


def executed(session: Session, statement: Any) -> CursorResult[Any]:
    """An UPDATE or DELETE run in the session: its result, whose rowcount says how many
    rows it changed (Session.execute is typed as returning any Result)."""
    return cast(CursorResult[Any], session.execute(statement))


def get_run(engine: Engine, run_id: str) -> TrainingRun:
    with session_scope(engine) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run


def page_runs(
    engine: Engine,
    limit: int,
    cursor: str | None = None,
    dataset_id: int | None = None,
    status: str | None = None,
) -> tuple[list[TrainingRun], str | None]:
    """A page of the runs (of one dataset, in one status), newest first."""
    from gallop.metadata.repo import keyset_page  # not at import: the register Lambda

    query = select(TrainingRun)
    if dataset_id is not None:
        query = query.where(TrainingRun.dataset_id == dataset_id)
    if status is not None:
        query = query.where(TrainingRun.status == status)
    order = [(TrainingRun.created_at, True), (TrainingRun.run_id, True)]
    with session_scope(engine) as session:
        return keyset_page(session, query, order, limit, cursor)


def find_model(engine: Engine, run_id: str) -> RegisteredModel | None:
    with session_scope(engine) as session:
        return session.scalar(select(RegisteredModel).where(RegisteredModel.run_id == run_id))


def start_run(engine: Engine, **fields: Any) -> tuple[TrainingRun, bool]:
    """A new PENDING run; or the existing one with that id, as it is, unless it FAILED or
    was CANCELLED: then it starts again as the next attempt. Returns (run, started)."""
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
    if existing.status not in RESTARTABLE:
        return existing, False
    restarted = _restart(engine, existing)
    return get_run(engine, run_id), restarted


def start_run_of(
    engine: Engine, settings: Settings, dataset: Dataset, version_id: str, config: dict[str, Any]
) -> tuple[TrainingRun, bool]:
    """start_run for a configuration on a dataset version, identified by what it is made
    of (gallop.training.identity): the API's runs and the retraining policy's alike."""
    code = code_version(settings)
    return start_run(
        engine,
        run_id=run_id_for(config, version_id, dataset.spec_hash, code),
        dataset_id=dataset.id,
        version_id=version_id,
        spec_hash=dataset.spec_hash,
        code_version=code,
        config=config,
    )


def _restart(engine: Engine, failed: TrainingRun) -> bool:
    """FAILED or CANCELLED → PENDING as the next attempt; False if another request
    restarted it first."""
    with session_scope(engine) as session:
        done = executed(
            session,
            update(TrainingRun)
            .where(
                TrainingRun.run_id == failed.run_id,
                TrainingRun.status.in_(RESTARTABLE),
                TrainingRun.attempt == failed.attempt,
            )
            .values(
                status=RunStatus.PENDING.value,
                attempt=failed.attempt + 1,
                stage="queued",
                reason=None,
                metrics=None,
                execution=None,
            ),
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
    _retrain_ended(engine, None, run_id)
    return get_run(engine, run_id)


def _retrain_ended(engine: Engine, artifacts: Store | None, run_id: str) -> None:
    """A retraining policy waiting on the run settles it: its model becomes the challenger,
    or the failure is recorded (gallop.renewal.outcome; a no-op for any other run)."""
    from gallop.renewal.outcome import retrain_ended

    try:
        retrain_ended(engine, artifacts, run_id)
    except Exception:  # the run's own outcome stands; the next monitor run settles the policy
        log.exception("the retraining policy waiting on run %s could not be settled", run_id)


def mark_cancelled(engine: Engine, run_id: str) -> TrainingRun:
    """PENDING or RUNNING → CANCELLED. RunEnded if it had already ended; the launcher
    stops what still runs (a run cancelled first is never marked anything else)."""
    get_run(engine, run_id)  # RunNotFound
    changed = _update(
        engine,
        run_id,
        (RunStatus.PENDING, RunStatus.RUNNING),
        status=RunStatus.CANCELLED.value,
        stage="cancelled",
        reason=CANCELLED,
    )
    run = get_run(engine, run_id)
    if not changed:
        raise RunEnded(f"training run {run_id!r} has already ended: {run.status}")
    return run


def _update(engine: Engine, run_id: str, when: tuple[RunStatus, ...], **values: Any) -> bool:
    """Set `values` if the run is in one of the `when` statuses; whether it was."""
    with session_scope(engine) as session:
        done = executed(
            session,
            update(TrainingRun)
            .where(TrainingRun.run_id == run_id, TrainingRun.status.in_([s.value for s in when]))
            .values(**values),
        )
    return bool(done.rowcount)


def fail_interrupted_runs(engine: Engine) -> int:
    """Local runs that were queued or training when their process died never finish:
    say so, so that they can be started again."""
    with session_scope(engine) as session:
        done = executed(
            session,
            update(TrainingRun)
            .where(
                TrainingRun.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                or_(TrainingRun.execution.is_(None), TrainingRun.execution == LOCAL_EXECUTION),
            )
            .values(status=RunStatus.FAILED.value, reason=INTERRUPTED),
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
    keys = {
        name: model_prefix + name
        for name in (MANIFEST_FILE, ONNX_FILE, REPORT_HTML_FILE, TARBALL_FILE)
    }
    manifest = servable_manifest(
        store,
        run_id,
        keys[MANIFEST_FILE],
        [keys[ONNX_FILE], keys[REPORT_HTML_FILE], keys[TARBALL_FILE]],
    )
    model = RegisteredModel(
        model_id=model_id_for(run_id),
        run_id=run_id,
        dataset_id=run.dataset_id,
        task=manifest["task"],
        artifact_key=keys[TARBALL_FILE],
        onnx_key=keys[ONNX_FILE],
        manifest_key=keys[MANIFEST_FILE],
        report_key=keys[REPORT_HTML_FILE],
        manifest=manifest,
    )
    try:
        with session_scope(engine) as session:
            session.add(model)
            done = executed(
                session,
                update(TrainingRun)
                .where(
                    TrainingRun.run_id == run_id,
                    TrainingRun.status != RunStatus.CANCELLED.value,
                )
                .values(
                    status=RunStatus.SUCCEEDED.value,
                    stage="model registered",
                    reason=None,
                    metrics=(manifest.get("metrics") or {}).get("stack"),
                ),
            )
            if not done.rowcount:  # rolled back with the model: a cancelled run has none
                raise RunCancelled(f"training run {run_id!r} was cancelled")
    except IntegrityError:  # registered concurrently (a retried Lambda invocation)
        found = find_model(engine, run_id)
        if found is None:
            raise
        return found
    crash_point(MODEL_REGISTERED)
    _retrain_ended(engine, store, run_id)
    return model


def servable_manifest(
    store: Store, run_id: str, manifest_key: str, other_keys: list[str]
) -> ModelManifest:
    """The run's model manifest, once its files are all there: ObjectMissing for a file
    that is not, ArtifactMismatch for a manifest that is not this run's."""
    try:
        manifest = json.loads(store.get_bytes(manifest_key))
    except ValueError as exc:
        raise ArtifactMismatch(f"{manifest_key} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("run_id") != run_id:
        named = manifest.get("run_id") if isinstance(manifest, dict) else None
        raise ArtifactMismatch(f"{manifest_key} names run {named!r}, not {run_id!r}")
    try:
        typed = read_model_manifest(manifest)
    except NotAManifest as exc:
        raise ArtifactMismatch(f"{manifest_key}: {exc}") from None
    for key in other_keys:
        store.head(key)  # nothing is registered that cannot be served
    return typed


def unregister_model(engine: Engine, artifacts: Store, run_id: str, reason: str) -> None:
    """Take back a registration whose files are lost: the aliases naming the model name
    nothing (history lines, serving objects written again), the model goes, and the run is
    FAILED with the reason, so that posting it again trains it again. One transaction."""
    model_id = model_id_for(run_id)
    with session_scope(engine) as session:
        registry.unregister_aliases(session, artifacts, model_id, actor=REPAIR, reason=reason)
        session.execute(delete(RegisteredModel).where(RegisteredModel.model_id == model_id))
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.run_id == run_id)
            .values(status=RunStatus.FAILED.value, stage="model lost", reason=reason)
        )


def model_id_for(run_id: str) -> str:
    return f"m-{run_id}"
