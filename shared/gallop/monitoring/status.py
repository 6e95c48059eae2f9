"""A model's monitoring as it stands: its training figures, its live figures by day, its
latest drift check and its alarms' states. What GET /v1/models/{id}/monitoring answers and
the monitoring page shows, read from the metadata store.

The alarm states follow the rules the CloudWatch alarms apply to what the monitor emits
(DriftedFeatures >= 1; LiveQualityDrop >= the quality margin), so the API and the page
say what the alarms say, also where no CloudWatch runs (gallop serve).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gallop.monitoring.drift import SCORE

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gallop.metadata.models import DriftCheck, LiveQuality, RegisteredModel

OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"
FEATURE_DRIFT, LIVE_QUALITY = "feature_drift", "live_quality"
# The figure each task's live-quality alarm watches, as the training report names it.
ALARM_METRIC = {"ranking": "ndcg@4", "binary": "auc", "regression": "rmse"}
# Lower is better for these; higher for every other metric (ROI, NDCG, AUC, coverage...).
LOWER_IS_BETTER = ("log_loss", "brier", "ece", "rmse", "mae", "interval_width")


def monitoring_status(
    engine: Engine,
    model: RegisteredModel,
    window_days: int,
    quality_margin: float,
    today: date | None = None,
) -> dict[str, Any]:
    """{"model_id", "dataset", "task", "training", "live", "drift", "alarms"}."""
    from gallop.metadata import repo

    training = {
        name: _number(value)
        for name, value in ((model.manifest.get("metrics") or {}).get("stack") or {}).items()
    }
    live = live_days(repo.live_quality_of(engine, model.model_id))
    check = repo.latest_drift_check(engine, model.model_id)
    today = today or datetime.now(UTC).date()
    return {
        "model_id": model.model_id,
        "dataset": model.manifest.get("dataset"),
        "task": model.task,
        "training": training,
        "live": live,
        "drift": drift_of(check),
        "alarms": [
            drift_alarm(check),
            quality_alarm(model.task, training, live, window_days, quality_margin, today),
        ],
    }


def live_days(stored: list[LiveQuality]) -> list[dict[str, Any]]:
    """Stored figures as one entry per day: {"day", "groups", "rows", "metrics"}."""
    days: dict[date, dict[str, Any]] = {}
    for row in stored:
        entry = days.setdefault(
            row.day, {"day": row.day.isoformat(), "groups": row.groups, "rows": row.rows}
        )
        entry.setdefault("metrics", {})[row.metric] = row.value
    return [days[day] for day in sorted(days)]


def drift_of(check: DriftCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "checked_at": check.checked_at,
        "rows": check.rows,
        "window": {"start": check.window_start, "end": check.window_end},
        "flagged": check.flagged,
        "features": check.table,
    }


def drift_alarm(check: DriftCheck | None) -> dict[str, str]:
    if check is None:
        return _alarm(FEATURE_DRIFT, INSUFFICIENT_DATA, "no drift check yet")
    score = any(r.get("flagged") for r in check.table if r["feature"] == SCORE)
    also = " (the score too)" if score else ""
    if check.flagged >= 1:
        names = [r["feature"] for r in check.table if r.get("flagged") and r["feature"] != SCORE]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        said = f"{check.flagged} feature{'s' if check.flagged > 1 else ''} drifted: {shown}{also}"
        return _alarm(FEATURE_DRIFT, ALARM, said)
    return _alarm(FEATURE_DRIFT, OK, f"no feature drifted in {check.rows} rows{also}")


def quality_alarm(
    task: str,
    training: dict[str, float | None],
    live: list[dict[str, Any]],
    window_days: int,
    margin: float,
    today: date,
) -> dict[str, str]:
    """ALARM when the alarm metric over the last window_days days is worse than training
    by the margin or more (relative), as the LiveQualityDrop alarm decides."""
    metric = ALARM_METRIC[task]
    first = (today - timedelta(days=window_days - 1)).isoformat()
    value = window_value([(d["day"], d["groups"], d["metrics"].get(metric)) for d in live], first)
    trained = training.get(metric)
    if trained is None:
        return _alarm(LIVE_QUALITY, INSUFFICIENT_DATA, f"no training figure for {metric}")
    if not math.isfinite(value):
        return _alarm(
            LIVE_QUALITY, INSUFFICIENT_DATA, f"no live {metric} in the last {window_days} days"
        )
    drop = relative_drop(metric, value, trained)
    how = f"{abs(drop):.1%} {'worse' if drop > 0 else 'better'}" if drop else "the same"
    said = f"live {metric} {value:.4f} over {window_days} days, {trained:.4f} in training ({how})"
    return _alarm(LIVE_QUALITY, ALARM if drop >= margin else OK, said)


def _alarm(name: str, state: str, reason: str) -> dict[str, str]:
    return {"name": name, "state": state, "reason": reason}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- against training (what the monitor emits as LiveQualityDrop, and its alarm judges) -----


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def relative_drop(metric: str, live: float, training: float) -> float:
    """How much worse live is than training, relative to training: 0.05 = 5 % worse
    (negative: better). What LiveQualityDrop reports and its alarm compares with the
    quality margin."""
    if not (math.isfinite(live) and math.isfinite(training)) or training == 0:
        return math.nan
    worse = live - training if lower_is_better(metric) else training - live
    return worse / abs(training)


def window_value(days: Sequence[tuple[str, int, float | None]], first_day: str) -> float:
    """A metric over the days from first_day on: the mean of the daily values weighted by
    the races (rows) each rests on. days: (day, groups, value)."""
    kept = [
        (groups, value)
        for day, groups, value in days
        if day >= first_day and value is not None and math.isfinite(value) and groups > 0
    ]
    total = sum(groups for groups, _ in kept)
    return sum(groups * value for groups, value in kept) / total if total else math.nan
