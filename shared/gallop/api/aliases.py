"""A dataset's aliases (champion, challenger) and their history, rolling the champion
back, and the dataset's traffic and retraining policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from gallop.api.auth import actor_of, require_role
from gallop.api.datasets import dataset_or_404
from gallop.api.models import serving_changed
from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.schemas import DatasetName
from gallop.renewal import policies
from gallop.renewal.policies import BadPolicy, Retraining
from gallop.serving import registry
from gallop.serving.registry import ModelUnreadable, NothingToRollBack

router = APIRouter(prefix="/v1/datasets", tags=["aliases"])

REASON = Field(default=None, max_length=1000, description="Why, for the alias history.")


class TrafficOut(BaseModel):
    mode: Literal["champion", "shadow", "split"]
    challenger_share: float = Field(description="split: the share of races the challenger answers.")
    shadow_share: float = Field(
        description="shadow, split: the share of races the model that did not answer also "
        "scores, off the reply path."
    )
    updated_by: str | None = Field(description="Who set it (an API key's name); null: never set.")
    updated_at: datetime | None


class AliasesOut(BaseModel):
    dataset: str
    champion: str | None = Field(description="The model id the champion names, if any.")
    challenger: str | None
    traffic: TrafficOut = Field(
        description="The traffic policy as set (a mode that needs a challenger is served "
        "as champion while there is none)."
    )


class AliasLine(BaseModel):
    alias: str
    action: str = Field(
        description="promote, approve, auto_promote, reject, expire, rollback, retrain, "
        "unregister or migrate."
    )
    from_model: str | None
    to_model: str | None
    actor: str = Field(description="An API key's name, or the policy or migration that acted.")
    reason: str | None
    approval_id: str | None
    at: datetime


class RollbackBody(BaseModel):
    reason: str | None = REASON


class RolledBack(BaseModel):
    dataset: str
    alias: Literal["champion"] = "champion"
    from_model: str | None = Field(description="The model the champion named.")
    to_model: str = Field(description="The champion now: the one before.")


class TrafficBody(BaseModel):
    mode: str = Field(description="champion, shadow or split.", max_length=16)
    challenger_share: float | None = Field(
        default=None, description="split: the challenger's share of races, in (0, 1)."
    )
    shadow_share: float | None = Field(
        default=None, description="shadow (1 by default), split (0): in [0, 1]."
    )
    shares: dict[str, float] | None = Field(
        default=None,
        description='Instead of challenger_share: {"champion": 0.95, "challenger": 0.05}, '
        "adding up to 1.",
    )


class RetrainingBody(BaseModel):
    every_hours: float | None = Field(default=None, description="Retrain on this schedule.")
    after_rows: int | None = Field(
        default=None,
        description="Retrain once this many rows were appended since the champion's training data.",
    )
    on_alarm: bool = Field(default=False, description="Retrain when the champion's alarm fires.")
    time_limit: int | None = Field(default=None, description="Seconds per run (its time budget).")
    auto_promote: bool = Field(
        default=False,
        description="Promote the challenger by itself when the comparison is clear "
        "(else an approval is asked for).",
    )


class RetrainingOut(RetrainingBody):
    updated_by: str | None = Field(description="Who set it; null: never set (retrains never).")
    updated_at: datetime | None
    last_trigger: str | None = Field(description="schedule, rows or alarm: what last fired.")
    last_triggered_at: datetime | None
    last_version_id: str | None
    last_run_id: str | None
    last_outcome: str | None
    last_reason: str | None


def _dataset_id(request: Request, name: str) -> int:
    return dataset_or_404(request.app.state.engine(), name).id


def _invalid(exc: BadPolicy) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", exc.field), "msg": str(exc), "type": "policy"}])


@router.get("/{name}/aliases", response_model=AliasesOut, responses={404: {}})
def get_aliases(name: DatasetName, request: Request) -> AliasesOut:
    """The dataset's champion and challenger, and its traffic policy."""
    engine = request.app.state.engine()
    dataset_id = _dataset_id(request, name)
    named = registry.aliases_of(engine, dataset_id)
    return AliasesOut(
        dataset=name,
        champion=named.get("champion"),
        challenger=named.get("challenger"),
        traffic=TrafficOut(**policies.describe_traffic(policies.traffic_of(engine, dataset_id))),
    )


@router.get("/{name}/aliases/history", response_model=Page[AliasLine], responses={404: {}})
def alias_history(
    name: DatasetName, request: Request, limit: Limit = 100, cursor: Cursor = None
) -> Page[AliasLine]:
    """Every move of the dataset's aliases (and every decision that moved none), newest
    first: who, when, from which model to which, and why."""
    engine = request.app.state.engine()
    dataset_id = _dataset_id(request, name)
    found, after = fetched(lambda: registry.history(engine, dataset_id, limit, cursor))
    items = [AliasLine.model_validate(event, from_attributes=True) for event in found]
    return Page(items=items, next_cursor=after)


@router.post(
    "/{name}/aliases/champion/rollback",
    response_model=RolledBack,
    responses={
        404: {},
        409: {"description": "No earlier champion, or its files are gone"},
    },
)
def rollback_champion(
    name: DatasetName, request: Request, body: RollbackBody | None = None
) -> RolledBack:
    """Point the champion back at the one it named before the last promotion (each call
    goes one step further back).

    Role: approver."""
    state = request.app.state
    dataset_id = _dataset_id(request, name)
    reason = body.reason if body else None
    try:
        before, now = registry.rollback(
            state.engine(), state.artifacts(), dataset_id, actor=actor_of(request), reason=reason
        )
    except (NothingToRollBack, ModelUnreadable) as exc:
        raise HTTPException(409, str(exc)) from None
    serving_changed(state, name)
    return RolledBack(dataset=name, from_model=before, to_model=now)


@router.put("/{name}/traffic", response_model=TrafficOut, responses={404: {}})
def put_traffic(name: DatasetName, body: TrafficBody, request: Request) -> TrafficOut:
    """Set how the dataset's champion requests are shared with its challenger: champion
    (none), shadow (the challenger also scores `shadow_share` of races, off the reply
    path) or split (`challenger_share` of races are answered by the challenger, by a
    stable hash of the race id). Served within the alias TTL.

    Role: writer."""
    state = request.app.state
    dataset_id = _dataset_id(request, name)
    try:
        traffic = policies.checked_traffic(
            body.mode, body.challenger_share, body.shadow_share, body.shares
        )
    except BadPolicy as exc:
        raise _invalid(exc) from None
    stored = policies.put_traffic(
        state.engine(), state.artifacts(), dataset_id, traffic, actor=actor_of(request)
    )
    serving_changed(state, name)
    return TrafficOut(**policies.describe_traffic(stored))


@router.get("/{name}/traffic", response_model=TrafficOut, responses={404: {}})
def get_traffic(name: DatasetName, request: Request) -> TrafficOut:
    """The dataset's traffic policy (never set: the champion answers every request)."""
    engine = request.app.state.engine()
    policy = policies.traffic_of(engine, _dataset_id(request, name))
    return TrafficOut(**policies.describe_traffic(policy))


@router.put("/{name}/retraining", response_model=RetrainingOut, responses={404: {}})
def put_retraining(name: DatasetName, body: RetrainingBody, request: Request) -> RetrainingOut:
    """Set when the dataset is retrained: on a schedule, after appended rows, on the
    champion's alarm (any that are set; none: never). A retrain makes the challenger.

    Role: writer; approver with auto_promote true."""
    if body.auto_promote:  # it would promote with no person deciding
        require_role(request, "approver")
    state = request.app.state
    dataset_id = _dataset_id(request, name)
    try:
        wanted = policies.checked_retraining(
            Retraining(**body.model_dump()), state.settings.run_time_limit_max
        )
    except BadPolicy as exc:
        raise _invalid(exc) from None
    stored = policies.put_retraining(state.engine(), dataset_id, wanted, actor=actor_of(request))
    return RetrainingOut(**_retraining_out(stored))


@router.get("/{name}/retraining", response_model=RetrainingOut, responses={404: {}})
def get_retraining(name: DatasetName, request: Request) -> RetrainingOut:
    """The dataset's retraining policy and what it last did (never set: retrains never)."""
    engine = request.app.state.engine()
    policy = policies.retraining_of(engine, _dataset_id(request, name))
    return RetrainingOut(**_retraining_out(policy))


def _retraining_out(policy: Any) -> dict[str, Any]:
    """The stored policy's fields; never set: retrains never, has done nothing."""
    if policy is None:
        return {field: None for field in RetrainingOut.model_fields} | vars(Retraining())
    return {field: getattr(policy, field) for field in RetrainingOut.model_fields}
