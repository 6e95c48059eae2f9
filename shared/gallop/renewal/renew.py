"""The renewal part of a monitor run, per dataset: expire approval requests past their
time, check the retraining policy's triggers, compare the champion with the challenger,
and act on a "promote": promote at once (a policy with auto_promote) or open an approval
request.

A (champion, challenger) pair is asked about once: a request rejected or expired is not
opened again for the same pair (a new challenger, or a new champion, is a new question).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gallop.layout import comparison_key
from gallop.metadata.db import session_scope
from gallop.metadata.models import AliasAction, Approval
from gallop.monitoring.compare import PROMOTE, Comparison, compare_dataset
from gallop.monitoring.status import ALARM, OK, monitoring_status
from gallop.renewal import approvals, retraining
from gallop.renewal.policies import retraining_of
from gallop.serving.registry import aliases_of, get_model, promote

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine

    from gallop.metadata.models import Dataset
    from gallop.settings import Settings
    from gallop.storage import Store
    from gallop.training.launchers import Launcher

log = logging.getLogger(__name__)

AUTO_ACTOR = "auto promotion"


def compare_and_store(
    engine: Engine,
    data: Store,
    artifacts: Store,
    settings: Settings,
    dataset: Dataset,
    now: datetime,
    read: dict[str, pd.DataFrame] | None = None,
) -> Comparison | None:
    """The dataset's comparison, written where GET /v1/datasets/{name}/challenger reads
    it; None when it has no champion and challenger (two different models) to compare.
    `read`: the results read already (gallop.monitoring.quality.newest_results)."""
    aliases = aliases_of(engine, dataset.id)
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    if not champion or not challenger or champion == challenger:
        return None
    comparison = compare_dataset(
        engine, data, dataset, champion, challenger, settings.renewal_min_races, read
    )
    artifacts.put_json(
        comparison_key(dataset.name), comparison.to_dict() | {"compared_at": now.isoformat()}
    )
    return comparison


def act(
    engine: Engine,
    artifacts: Store,
    settings: Settings,
    dataset: Dataset,
    comparison: Comparison | None,
    launcher: Launcher,
    *,
    now: datetime,
    scheduled: bool,
) -> dict[str, Any]:
    """Expire, retrain, promote or ask: what was done, for the monitor's reply."""
    expired = approvals.expire_due(engine, settings, now, dataset_id=dataset.id)
    done: dict[str, Any] = {
        "dataset": dataset.name,
        "expired": [a.approval_id for a in expired],
        "recommendation": comparison.recommendation if comparison else None,
    }
    evaluation = retraining.evaluate(
        engine,
        artifacts,
        settings,
        dataset,
        launcher,
        now=now,
        alarmed=lambda: _champion_alarmed(engine, settings, dataset, now),
        scheduled=scheduled,
    )
    done["retraining"] = evaluation.to_dict() if evaluation else None
    if comparison is None or comparison.recommendation != PROMOTE:
        return done
    policy = retraining_of(engine, dataset.id)  # as evaluate left it
    if policy is not None and policy.auto_promote:
        promote(
            engine,
            artifacts,
            comparison.challenger,
            "champion",
            actor=AUTO_ACTOR,
            reason=comparison.reason,
            action=AliasAction.AUTO_PROMOTE,
        )
        done["promoted"] = comparison.challenger
    elif not _asked_before(engine, dataset.id, comparison):
        opened = approvals.open_approval(engine, settings, dataset.id, comparison.to_dict(), now)
        done["approval_id"] = opened.approval_id if opened else None
    return done


def _champion_alarmed(
    engine: Engine, settings: Settings, dataset: Dataset, now: datetime
) -> bool | None:
    """Whether one of the champion's alarms is in ALARM (False: all OK or short of data
    with one OK; None: no champion, or nothing to judge by yet)."""
    champion = aliases_of(engine, dataset.id).get("champion")
    if champion is None:
        return None
    status = monitoring_status(
        engine,
        get_model(engine, champion),
        settings.monitor_window_days,
        settings.quality_margin,
        today=now.date(),
    )
    states = {alarm["state"] for alarm in status["alarms"]}
    if ALARM in states:
        return True
    return False if OK in states else None


def _asked_before(engine: Engine, dataset_id: int, comparison: Comparison) -> bool:
    with session_scope(engine) as session:
        return (
            session.scalar(
                select(Approval.approval_id).where(
                    Approval.dataset_id == dataset_id,
                    Approval.champion_model == comparison.champion,
                    Approval.challenger_model == comparison.challenger,
                )
            )
            is not None
        )
