"""Renewing a champion: the champion/challenger comparison and the approval requests it
opens (gallop.renewal). Every read expires the requests past their time first."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from gallop.api.auth import actor_of
from gallop.api.datasets import dataset_or_404
from gallop.api.models import serving_changed
from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.schemas import DatasetName
from gallop.layout import comparison_key
from gallop.metadata.db import session_scope
from gallop.metadata.models import Approval
from gallop.metadata.repo import keyset_page
from gallop.renewal import approvals
from gallop.serving.registry import ModelUnreadable, aliases_of
from gallop.spec import NAME_PATTERN
from gallop.storage import ObjectMissing

router = APIRouter(tags=["renewal"])

ApprovalId = Annotated[
    str, Path(pattern=r"^ap-[0-9a-f]{20}$", description="The approval request's id.")
]
StatusName = Literal["PENDING", "APPROVED", "REJECTED", "EXPIRED"]


class ApprovalOut(BaseModel):
    approval_id: str
    dataset: str | None
    status: StatusName
    champion: str | None = Field(description="The champion when the request was opened.")
    challenger: str = Field(description="The model an approval makes the champion.")
    recommendation: str | None
    reason_for_request: str | None = Field(description="The comparison's words.")
    comparison: dict[str, Any] = Field(description="The comparison that opened the request.")
    opened_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None = Field(description="The approver's key name, or 'approval timeout'.")
    reason: str | None = Field(description="Why it was decided so.")
    execution: str | None = Field(description="On AWS: the renewal state machine's execution.")


class Challenger(BaseModel):
    dataset: str
    champion: str | None
    challenger: str | None
    comparison: dict[str, Any] | None = Field(
        description="gallop.monitoring.compare's, from the latest monitor run: per metric "
        "the champion's and challenger's figures, the difference (positive: the challenger "
        "is better) and its 95 % paired-bootstrap interval; the recommendation and its "
        "rule. Null until a monitor run compared these two models."
    )
    approval: ApprovalOut | None = Field(description="The dataset's PENDING request, if any.")


class Decision(BaseModel):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(None, max_length=2000, description="Kept in the history.")


@router.get(
    "/v1/datasets/{name}/challenger",
    response_model=Challenger,
    responses={404: {"description": "No dataset of that name"}},
)
def get_challenger(name: DatasetName, request: Request) -> Challenger:
    """The dataset's champion against its challenger on the same live races, and the open
    approval request."""
    state = request.app.state
    engine = state.engine()
    dataset = dataset_or_404(engine, name)
    approvals.expire_due(engine, state.settings, dataset_id=dataset.id)
    aliases = aliases_of(engine, dataset.id)
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    comparison = _stored_comparison(state.artifacts(), name)
    if comparison is not None and (
        comparison.get("champion"),
        comparison.get("challenger"),
    ) != (champion, challenger):
        comparison = None  # of models that are no longer the two
    pending = approvals.pending_for(engine, dataset.id)
    return Challenger(
        dataset=name,
        champion=champion,
        challenger=challenger,
        comparison=comparison,
        approval=_out(pending) if pending else None,
    )


@router.get("/v1/approvals", response_model=Page[ApprovalOut], responses={404: {}})
def list_approvals(
    request: Request,
    dataset: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this dataset's requests.")
    ] = None,
    status: Annotated[StatusName | None, Query(description="Only requests in it.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ApprovalOut]:
    """Approval requests, newest first."""
    state = request.app.state
    engine = state.engine()
    dataset_id = dataset_or_404(engine, dataset).id if dataset else None
    approvals.expire_due(engine, state.settings, dataset_id=dataset_id)
    query = select(Approval)
    if dataset_id is not None:
        query = query.where(Approval.dataset_id == dataset_id)
    if status is not None:
        query = query.where(Approval.status == status)
    order = [(Approval.opened_at, True), (Approval.approval_id, True)]

    def fetch() -> tuple[list[Approval], str | None]:
        with session_scope(engine) as session:
            return keyset_page(session, query, order, limit, cursor)

    found, after = fetched(fetch)
    return Page(items=[_out(a) for a in found], next_cursor=after)


@router.get("/v1/approvals/{approval_id}", response_model=ApprovalOut, responses={404: {}})
def get_approval(approval_id: ApprovalId, request: Request) -> ApprovalOut:
    state = request.app.state
    approvals.expire_due(state.engine(), state.settings, approval_id=approval_id)
    try:
        return _out(approvals.get_approval(state.engine(), approval_id))
    except approvals.ApprovalNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post(
    "/v1/approvals/{approval_id}",
    response_model=ApprovalOut,
    responses={
        403: {"description": "The key has not the approver role"},
        404: {"description": "No approval request of that id"},
        409: {
            "description": "Decided already, expired, or the champion moved since the "
            "request was opened: nothing changed"
        },
    },
)
def decide_approval(approval_id: ApprovalId, body: Decision, request: Request) -> ApprovalOut:
    """Approve (the challenger becomes the champion, in the transaction that marks the
    request APPROVED) or reject (the champion stays) a PENDING request. Role: approver."""
    state = request.app.state
    try:
        approval = approvals.decide(
            state.engine(),
            state.artifacts(),
            state.settings,
            approval_id,
            body.decision,
            actor=actor_of(request),
            reason=body.reason,
        )
    except approvals.ApprovalNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (approvals.ApprovalConflict, ModelUnreadable) as exc:
        raise HTTPException(409, str(exc)) from None
    out = _out(approval)
    serving_changed(state, out.dataset)
    return out


def _out(approval: Approval) -> ApprovalOut:
    return ApprovalOut(**approvals.describe(approval))


def _stored_comparison(artifacts: Any, dataset: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(artifacts.get_bytes(comparison_key(dataset))))
    except ObjectMissing:
        return None
