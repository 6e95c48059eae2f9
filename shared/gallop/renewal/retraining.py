"""A dataset's retraining policy: when one of its triggers fires, a run on the newest
VALID version with the champion's configuration (and the policy's time_limit), started
through the launcher the API uses. Its model becomes the challenger (gallop.renewal.outcome).

Triggers (any that is set), each firing once:
- schedule: `every_hours` since it last fired (or since the policy was set), checked by
  the scheduled monitor runs;
- rows: the newest VALID version has `after_rows` more rows than the version the
  champion was trained on; once per version (checked when ingest announces a version,
  and by every monitor run after, in case its features were not ready yet);
- alarm: one of the champion's alarms (drift, live quality: gallop.monitoring.status's
  rules) goes from OK to ALARM; `alarm_seen` remembers the state.
While a retrain runs, nothing fires. A retrain that fails is recorded on the policy; the
next trigger tries again, and a trigger that fired does not fire again for the same
version, alarm or period: no loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gallop.metadata import repo
from gallop.metadata.db import session_scope
from gallop.metadata.models import (
    Dataset,
    DatasetVersion,
    FeatureStatus,
    RetrainingPolicy,
    RunStatus,
    TrainingRun,
    utcnow,
)
from gallop.renewal import notify
from gallop.renewal.outcome import (
    FAILED,
    RUNNING,
    SKIPPED,
    record_failure,
    retrain_ended,
    update_policy,
)
from gallop.renewal.policies import retraining_of
from gallop.serving.registry import aliases_of, get_model
from gallop.training import runs
from gallop.training.config import BadRunConfig, CostBounds, run_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine

    from gallop.settings import Settings
    from gallop.storage import Store
    from gallop.training.launchers import Launcher

log = logging.getLogger(__name__)

SCHEDULE, ROWS, ALARM = "schedule", "rows", "alarm"


@dataclass(frozen=True)
class Evaluation:
    """What a policy's evaluation did: the trigger that fired (or None), and what
    followed in words."""

    dataset: str
    trigger: str | None
    said: str
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "trigger": self.trigger,
            "said": self.said,
            "run_id": self.run_id,
        }


def evaluate(
    engine: Engine,
    artifacts: Store,
    settings: Settings,
    dataset: Dataset,
    launcher: Launcher,
    *,
    now: datetime | None = None,
    alarmed: Callable[[], bool | None] | None = None,
    scheduled: bool = False,
) -> Evaluation | None:
    """Check the dataset's policy's triggers; start a retrain if one fires. alarmed: asks
    the champion's alarm state now (None: not known in this run), only of a policy that
    watches alarms; scheduled: a scheduled run (the schedule trigger is checked only
    then). None when the dataset has no policy."""
    now = now or utcnow()
    policy = retraining_of(engine, dataset.id)
    if policy is None:
        return None
    if policy.last_outcome == RUNNING:
        settled = _settle(engine, artifacts, policy)
        if settled is None:
            return Evaluation(dataset.name, None, f"retrain {policy.last_run_id} is running")
        policy = retraining_of(engine, dataset.id) or policy
    champion = aliases_of(engine, dataset.id).get("champion")
    version = repo.newest_valid_version(engine, dataset)
    watched = policy.on_alarm or policy.alarm_seen  # else the state is not worth asking
    state = alarmed() if alarmed is not None and watched else None
    trigger = _due(engine, policy, champion, version, now, state, scheduled)
    if state is False and policy.alarm_seen:  # back to OK: the next ALARM fires again
        _update(engine, dataset.id, alarm_seen=False)
    if trigger is None:
        return Evaluation(dataset.name, None, "no trigger is due")
    if champion is None or version is None:
        what = "no champion" if champion is None else "no VALID version"
        return Evaluation(dataset.name, None, f"{trigger} trigger due, but {what} to retrain")
    if not _features_ready(engine, dataset, version):  # the trigger waits, unspent
        return Evaluation(
            dataset.name,
            None,
            f"{trigger} trigger due: waiting for the features of {version.version_id}",
        )
    return _retrain(
        engine, artifacts, settings, dataset, policy, launcher, trigger, champion, version, now
    )


def _due(
    engine: Engine,
    policy: RetrainingPolicy,
    champion: str | None,
    version: DatasetVersion | None,
    now: datetime,
    alarmed: bool | None,
    scheduled: bool,
) -> str | None:
    if policy.on_alarm and alarmed and not policy.alarm_seen:
        return ALARM
    if policy.after_rows and champion and version is not None:
        trained = _trained_rows(engine, champion)
        grown = (version.row_count or 0) - trained if trained is not None else None
        fresh = version.version_id != policy.last_version_id
        if fresh and grown is not None and grown >= policy.after_rows:
            return ROWS
    if scheduled and policy.every_hours:
        since = policy.last_triggered_at or policy.updated_at
        if now - since >= timedelta(hours=policy.every_hours):
            return SCHEDULE
    return None


def _retrain(
    engine: Engine,
    artifacts: Store,
    settings: Settings,
    dataset: Dataset,
    policy: RetrainingPolicy,
    launcher: Launcher,
    trigger: str,
    champion: str,
    version: DatasetVersion,
    now: datetime,
) -> Evaluation:
    """Start the run (the trigger is spent whatever follows)."""
    fired = {
        "last_trigger": trigger,
        "last_triggered_at": now,
        "last_version_id": version.version_id,
        "last_reason": None,
    } | ({"alarm_seen": True} if trigger == ALARM else {})
    try:
        run, started = _start_run(engine, settings, dataset, policy, champion, version)
    except BadRunConfig as exc:  # the champion's config no longer passes today's bounds
        _update(
            engine, dataset.id, **fired, last_run_id=None, last_outcome=FAILED, last_reason=str(exc)
        )
        return Evaluation(dataset.name, trigger, f"retrain not started: {exc}")
    _update(engine, dataset.id, **fired, last_run_id=run.run_id, last_outcome=RUNNING)
    notify.announce(
        settings,
        f"gallop {dataset.name}: retraining ({trigger} trigger)",
        {
            "dataset": dataset.name,
            "trigger": trigger,
            "run_id": run.run_id,
            "version_id": version.version_id,
        },
    )
    if started:
        launcher.launch(run)  # a launch that fails marks the run FAILED: outcome records it
        return Evaluation(dataset.name, trigger, f"retrain {run.run_id} started", run.run_id)
    if run.status == RunStatus.SUCCEEDED.value and runs.model_id_for(run.run_id) == champion:
        _update(
            engine,
            dataset.id,
            last_outcome=SKIPPED,
            last_reason=f"version {version.version_id} with the champion's configuration "
            "is the champion's own run",
        )
        return Evaluation(
            dataset.name, trigger, "nothing to retrain: the champion is that run", run.run_id
        )
    # the same run exists: settled now if it has ended, by its end otherwise
    settled = _settle(engine, artifacts, retraining_of(engine, dataset.id) or policy)
    return Evaluation(
        dataset.name, trigger, f"retrain {run.run_id}: {settled or 'running'}", run.run_id
    )


def _start_run(
    engine: Engine,
    settings: Settings,
    dataset: Dataset,
    policy: RetrainingPolicy,
    champion: str,
    version: DatasetVersion,
) -> tuple[TrainingRun, bool]:
    """The champion's run configuration, with the policy's time_limit, on `version`."""
    model = get_model(engine, champion)
    config = runs.get_run(engine, model.run_id).config
    hyperparameters = dict(config["hyperparameters"])
    if policy.time_limit:
        hyperparameters["time_limit"] = policy.time_limit
    chosen = run_config(
        dataset.name,
        dataset.spec["task"],
        list(config["bases"]),
        hyperparameters,
        config["test_share"],
        CostBounds.of(settings),
    )
    return runs.start_run_of(engine, settings, dataset, version.version_id, chosen)


def _settle(engine: Engine, artifacts: Store, policy: RetrainingPolicy) -> str | None:
    """A policy's run that ended without its end being seen (a crash between the two):
    settled now. None while it runs."""
    if policy.last_run_id is None:  # not left so by this module: let the next trigger try
        _update(engine, policy.dataset_id, last_outcome=FAILED, last_reason="no run recorded")
        return FAILED
    try:
        run = runs.get_run(engine, policy.last_run_id)
    except runs.RunNotFound:
        return record_failure(engine, policy.last_run_id, f"run {policy.last_run_id} is gone")
    if run.status not in runs.ENDED:
        return None
    return retrain_ended(engine, artifacts, run.run_id)


def _trained_rows(engine: Engine, model_id: str) -> int | None:
    """Rows of the version the model was trained on."""
    with session_scope(engine) as session:
        row = session.execute(
            select(DatasetVersion.row_count)
            .join(TrainingRun, TrainingRun.version_id == DatasetVersion.version_id)
            .where(
                TrainingRun.run_id == get_model(engine, model_id).run_id,
                DatasetVersion.dataset_id == TrainingRun.dataset_id,
            )
        ).first()
    return None if row is None or row[0] is None else int(row[0])


def _features_ready(engine: Engine, dataset: Dataset, version: DatasetVersion) -> bool:
    found = repo.find_feature_set(engine, dataset, version.version_id, dataset.spec_hash)
    return found is not None and found.status == FeatureStatus.READY.value


def _update(engine: Engine, dataset_id: int, **values: Any) -> None:
    with session_scope(engine) as session:
        update_policy(session, dataset_id, **values)
