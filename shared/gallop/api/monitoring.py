"""A model's monitoring: live quality by day against its training figures, the latest
drift check, and the states of the alarms that watch it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gallop.api.schemas import ModelId
from gallop.layout import monitoring_page_key
from gallop.monitoring.status import monitoring_status
from gallop.serving.registry import ModelNotFound, model_prefix
from gallop.serving.registry import get_model as registered_model
from gallop.spec import NAME_PATTERN
from gallop.storage import ObjectMissing

router = APIRouter(tags=["models"])
# How long the API waits for the monitor function: within API Gateway's 29 s.
INVOKE_SECONDS = 25


class LiveDay(BaseModel):
    day: str = Field(description="YYYY-MM-DD: the UTC day the races (rows) were served.")
    groups: int = Field(description="Races scored (rows, for ungrouped tasks).")
    rows: int = Field(description="Captured rows scored against their results.")
    metrics: dict[str, float | None] = Field(
        description="Named as in training (ndcg@4, race_log_loss, auc, rmse...); "
        "null where the day's rows cannot say."
    )


class DriftWindow(BaseModel):
    start: datetime | None = Field(description="The first captured row checked.")
    end: datetime | None = Field(description="The last captured row checked.")


class DriftFeature(BaseModel):
    """One feature's drift (or the score's, feature "(score)")."""

    model_config = {"extra": "allow"}

    feature: str
    psi: float | None = Field(description="Population stability index against training.")
    ks_statistic: float | None = None
    ks_p: float | None = Field(None, description="KS test p-value.")
    ks_p_threshold: float | None = Field(
        None, description="alpha / number of features (Bonferroni)."
    )
    flagged: bool


class Drift(BaseModel):
    checked_at: datetime
    rows: int = Field(description="Captured rows the check compared with training.")
    window: DriftWindow
    flagged: int = Field(description="Features flagged as drifted.")
    features: list[DriftFeature]


class Alarm(BaseModel):
    name: Literal["feature_drift", "live_quality"]
    state: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
    reason: str


class Monitoring(BaseModel):
    model_id: str
    dataset: str | None
    training: dict[str, float | None] = Field(description="The stack's held-out figures.")
    live: list[LiveDay] = Field(description="Oldest day first.")
    drift: Drift | None = Field(description="The latest drift check; null before the first.")
    alarms: list[Alarm] = Field(
        description="Judged by the rules the CloudWatch alarms apply: a drifted feature; "
        "the alarm metric worse than training by the quality margin over the window."
    )
    page_url: str | None = Field(
        description="A presigned link to the HTML monitoring page; null until the monitor "
        "has written one."
    )


@router.get(
    "/v1/models/{model_id}/monitoring",
    response_model=Monitoring,
    responses={404: {"description": "No model of that id"}},
)
def get_monitoring(model_id: ModelId, request: Request) -> Monitoring:
    """Live quality by day against the training figures, the latest drift table, and the
    alarms' states."""
    state = request.app.state
    settings = state.settings
    try:
        model = registered_model(state.engine(), model_id)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    status = monitoring_status(
        state.engine(), model, settings.monitor_window_days, settings.quality_margin
    )
    return Monitoring(**status, page_url=_page_url(state, model_id))


def _page_url(state: Any, model_id: str) -> str | None:
    key = monitoring_page_key(model_prefix(model_id))
    try:
        state.artifacts().head(key)
    except ObjectMissing:
        return None
    except ClientError as exc:  # S3's answer for a missing key to a reader without ListBucket
        if exc.response["Error"]["Code"] not in ("403", "AccessDenied", "Forbidden"):
            raise
        return None
    return str(state.artifacts().presigned_get(key, state.settings.report_url_expiry_seconds))


class CheckBody(BaseModel):
    dataset: str | None = Field(
        None, pattern=NAME_PATTERN, description="Only this dataset's models; all by default."
    )


class ModelCheck(BaseModel):
    """What the check found for one model that served captured predictions."""

    model_id: str
    dataset: str
    rows: int = Field(description="Captured rows in the monitoring window.")
    new_rows: int = Field(description="Of them, rows no monitor run had read before.")
    live: list[LiveDay] = Field(description="The window's days with live figures.")
    drift: list[DriftFeature] | None = Field(description="The drift table; null if not checked.")
    drift_skipped: str | None = Field(description="Why drift was not checked.")
    alarms: list[Alarm]
    page_key: str | None = Field(description="The monitoring page's key (artifacts bucket).")
    problems: list[str] = Field(description="What could not be done, and why.")


class Checks(BaseModel):
    checks: list[ModelCheck] = Field(description="One per model with captured predictions.")
    renewals: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per dataset, what renewal did: approval requests expired, the "
        "retraining policy's trigger and run, the comparison's recommendation, a promotion "
        "or the approval request it opened; or its problems.",
    )


@router.post(
    "/v1/monitoring/checks",
    response_model=Checks,
    tags=["monitoring"],
    responses={
        404: {"description": "No dataset of that name"},
        502: {"description": "The monitor function failed"},
        503: {"description": "The monitor is busy: ask again later"},
        504: {"description": "The check takes longer than a request may: it runs on"},
    },
)
def check_now(body: CheckBody, request: Request) -> Checks:
    """Run the monitor now (as its schedule does), checking drift for every model with
    captured predictions whatever their count: live quality from the results stored,
    the drift table, the alarms' states; each model's monitoring page is rewritten."""
    settings = request.app.state.settings
    if body.dataset is not None:
        from gallop.api.datasets import dataset_or_404

        dataset_or_404(request.app.state.engine(), body.dataset)
    if settings.monitor_function_name:  # on AWS: the monitor function has the data image
        return Checks(**_invoke_monitor(settings, body.dataset))
    from gallop.monitoring.run import scheduled_or_asked  # as the monitor function answers

    return Checks(**scheduled_or_asked(settings, {"dataset": body.dataset, "force": True}))


def _invoke_monitor(settings: Any, dataset: str | None) -> dict[str, Any]:
    """The monitor function's answer, within API Gateway's 29 s: a check that takes longer
    runs on, and its figures appear in GET /v1/models/{id}/monitoring when it is done."""
    import json

    from botocore.exceptions import ClientError, ReadTimeoutError

    from gallop import aws

    try:
        lambda_ = aws.client("lambda", settings, read_timeout=INVOKE_SECONDS)
        reply = lambda_.invoke(
            FunctionName=settings.monitor_function_name,
            Payload=json.dumps({"dataset": dataset, "force": True}).encode(),
        )
    except ReadTimeoutError:
        raise HTTPException(
            504,
            "the check is taking longer than a request may: it runs on, and each model's "
            "GET /v1/models/{id}/monitoring shows its figures when it is done",
        ) from None
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "TooManyRequestsException":
            raise HTTPException(
                503, "the monitor is busy with other runs: ask again in a minute"
            ) from None
        raise
    payload = json.loads(reply["Payload"].read() or b"{}")
    if reply.get("FunctionError"):
        raise HTTPException(502, f"the monitor function failed: {payload.get('errorMessage')}")
    return dict(payload)
