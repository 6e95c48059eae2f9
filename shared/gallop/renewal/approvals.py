"""Approval requests: a comparison that recommends the challenger opens one; a person
with the approver role approves or rejects it before it expires.

- Opened when the comparison says "promote" and no request of the dataset is PENDING
  (one per dataset, by a partial unique index); it expires after
  `approval_timeout_hours`. It is announced on the alarm topic; on AWS the renewal state
  machine starts and its first state stores a task token on the request (`await_token`).
- Approve: only a PENDING, unexpired request, and only while the champion is the one the
  request was opened against; the request becomes APPROVED and its challenger the champion
  in one transaction (else ApprovalConflict, nothing changed).
- Reject: REJECTED and a `reject` history line; the champion stays.
- Expire: a PENDING request past its `expires_at` becomes EXPIRED with an `expire`
  history line (by the state machine's timeout, every monitor run, every read).
Whatever the outcome, the execution waiting on the token is told (notify).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gallop.metadata.db import session_scope
from gallop.metadata.models import AliasAction, Approval, ApprovalStatus, ModelAlias, utcnow
from gallop.renewal import notify
from gallop.serving.registry import CHAMPION

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from gallop.settings import Settings
    from gallop.storage import Store

TIMEOUT_ACTOR = "approval timeout"
APPROVE, REJECT = "approve", "reject"


class ApprovalNotFound(LookupError):
    pass


class ApprovalConflict(ValueError):
    """The request cannot be decided so (decided already, expired, the champion moved):
    nothing changed."""


def new_approval_id() -> str:
    return f"ap-{uuid.uuid4().hex[:20]}"


def open_approval(
    engine: Engine,
    settings: Settings,
    dataset_id: int,
    comparison: dict[str, Any],
    now: datetime | None = None,
) -> Approval | None:
    """A request to promote the comparison's challenger over its champion; None when the
    dataset already has a PENDING one (for this challenger or an earlier one)."""
    now = now or utcnow()
    approval = Approval(
        approval_id=new_approval_id(),
        dataset_id=dataset_id,
        champion_model=comparison["champion"],
        challenger_model=comparison["challenger"],
        status=ApprovalStatus.PENDING.value,
        comparison=comparison,
        opened_at=now,
        expires_at=now + timedelta(hours=settings.approval_timeout_hours),
    )
    try:
        with session_scope(engine) as session:
            if _pending(session, dataset_id) is not None:
                return None
            session.add(approval)
    except IntegrityError:  # another run opened one at the same moment
        return None
    execution = notify.start_waiting(settings, approval)
    if execution is None:  # no state machine to wait on it: say so now
        notify.announce(settings, _subject(approval, "waits for approval"), describe(approval))
    else:  # its first state stores the task token, and announces the request then
        with session_scope(engine) as session:
            stored = session.get(Approval, approval.approval_id)
            if stored is not None:
                stored.execution = execution
        approval.execution = execution
    return approval


def await_token(engine: Engine, settings: Settings, approval_id: str, task_token: str) -> Approval:
    """The renewal state machine waits on the request: keep its token, and announce the
    request. A request decided before the token came is told at once."""
    with session_scope(engine) as session:
        approval = _get(session, approval_id, lock=True)
        approval.task_token = task_token
    if approval.status == ApprovalStatus.PENDING.value:
        notify.announce(settings, _subject(approval, "waits for approval"), describe(approval))
    else:
        notify.finish_waiting(settings, approval)
    return approval


def decide(
    engine: Engine,
    artifacts: Store,
    settings: Settings,
    approval_id: str,
    decision: str,
    *,
    actor: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> Approval:
    """Approve or reject a request (the module's docstring has the rules)."""
    from gallop.serving.registry import promote, record_event

    if decision not in (APPROVE, REJECT):
        raise ValueError(f"decision must be {APPROVE!r} or {REJECT!r}, not {decision!r}")
    now = now or utcnow()
    expire_due(engine, settings, now, approval_id=approval_id)  # a late approval is refused
    with session_scope(engine) as session:
        approval = _get(session, approval_id, lock=True)
        _must_be_pending(approval)
        approval.decided_at, approval.decided_by, approval.reason = now, actor, reason
        if decision == APPROVE:
            _champion_unmoved(session, approval)
            approval.status = ApprovalStatus.APPROVED.value
            session.flush()  # the request is APPROVED before the alias moves
            promote(
                engine,
                artifacts,
                approval.challenger_model,
                CHAMPION,
                actor=actor,
                reason=reason or f"approved request {approval_id}",
                action=AliasAction.APPROVE,
                approval_id=approval_id,
                session=session,
            )
        else:
            approval.status = ApprovalStatus.REJECTED.value
            record_event(
                session,
                approval.dataset_id,
                CHAMPION,
                AliasAction.REJECT,
                actor=actor,
                reason=reason or f"rejected request {approval_id}",
                from_model=approval.champion_model,
                to_model=approval.champion_model,
                approval_id=approval_id,
            )
    notify.finish_waiting(settings, approval)
    return approval


def expire(
    engine: Engine, settings: Settings, approval_id: str, now: datetime | None = None
) -> Approval:
    """The state machine's timeout: the request expires if it is still PENDING (its
    timeout is the request's; a request decided meanwhile stays as decided)."""
    with session_scope(engine) as session:
        approval = _get(session, approval_id, lock=True)
        if approval.status == ApprovalStatus.PENDING.value:
            _expire(session, approval, now or utcnow())
    return approval


def expire_due(
    engine: Engine,
    settings: Settings,
    now: datetime | None = None,
    *,
    dataset_id: int | None = None,
    approval_id: str | None = None,
) -> list[Approval]:
    """PENDING requests past their expires_at become EXPIRED (each with a history line);
    the executions waiting on them are told. Returns them."""
    now = now or utcnow()
    query = select(Approval).where(
        Approval.status == ApprovalStatus.PENDING.value, Approval.expires_at <= now
    )
    if dataset_id is not None:
        query = query.where(Approval.dataset_id == dataset_id)
    if approval_id is not None:
        query = query.where(Approval.approval_id == approval_id)
    with session_scope(engine) as session:
        expired = list(session.scalars(query.with_for_update()))
        for approval in expired:
            _expire(session, approval, now)
    for approval in expired:
        notify.finish_waiting(settings, approval)
    return expired


def state_machine_event(settings: Settings, event: dict[str, Any]) -> dict[str, Any]:
    """The renewal state machine's calls to the monitor function: its first state hands
    over the task token ({"renewal": "await", "approval_id", "task_token"}); its timeout
    expires the request ({"renewal": "expire", "approval_id"}). Returns the request."""
    from gallop.metadata.db import engine_for

    engine = engine_for(settings.sqlalchemy_url)
    kind, approval_id = event.get("renewal"), event.get("approval_id")
    if not isinstance(approval_id, str) or not approval_id:
        raise ValueError(f"a renewal event names no approval_id: {sorted(event)}")
    if kind == "await":
        token = event.get("task_token")
        if not isinstance(token, str) or not token:
            raise ValueError("an await event carries no task_token")
        approval = await_token(engine, settings, approval_id, token)
    elif kind == "expire":
        approval = expire(engine, settings, approval_id)
    else:
        raise ValueError(f"unknown renewal event {kind!r}: expected 'await' or 'expire'")
    return {"approval_id": approval.approval_id, "status": approval.status}


def get_approval(engine: Engine, approval_id: str) -> Approval:
    with session_scope(engine) as session:
        return _get(session, approval_id)


def pending_for(engine: Engine, dataset_id: int) -> Approval | None:
    with session_scope(engine) as session:
        return _pending(session, dataset_id)


def describe(approval: Approval) -> dict[str, Any]:
    """The request as the API answers it (and the notification says it)."""
    comparison = approval.comparison or {}
    return {
        "approval_id": approval.approval_id,
        "dataset": comparison.get("dataset"),
        "status": approval.status,
        "champion": approval.champion_model,
        "challenger": approval.challenger_model,
        "recommendation": comparison.get("recommendation"),
        "reason_for_request": comparison.get("reason"),
        "comparison": comparison,
        "opened_at": approval.opened_at,
        "expires_at": approval.expires_at,
        "decided_at": approval.decided_at,
        "decided_by": approval.decided_by,
        "reason": approval.reason,
        "execution": approval.execution,
    }


# -- inside a transaction ---------------------------------------------------------------


def _get(session: Session, approval_id: str, lock: bool = False) -> Approval:
    approval = session.get(Approval, approval_id, with_for_update=lock)
    if approval is None:
        raise ApprovalNotFound(f"no approval request {approval_id[:80]!r}")
    return approval


def _pending(session: Session, dataset_id: int) -> Approval | None:
    return session.scalar(
        select(Approval).where(
            Approval.dataset_id == dataset_id, Approval.status == ApprovalStatus.PENDING.value
        )
    )


def _must_be_pending(approval: Approval) -> None:
    if approval.status == ApprovalStatus.PENDING.value:
        return
    by = f" by {approval.decided_by}" if approval.decided_by else ""
    when = f" at {approval.decided_at.isoformat()}" if approval.decided_at else ""
    raise ApprovalConflict(
        f"approval request {approval.approval_id} is already {approval.status}{by}{when}: "
        "it cannot be decided again; nothing changed"
    )


def _champion_unmoved(session: Session, approval: Approval) -> None:
    row = session.get(ModelAlias, (approval.dataset_id, CHAMPION), with_for_update=True)
    now = row.model_id if row else None
    if now != approval.champion_model:
        raise ApprovalConflict(
            f"the champion moved since approval request {approval.approval_id} was opened: "
            f"it was {approval.champion_model}, it is {now} now; the comparison no longer "
            "holds, nothing changed"
        )


def _expire(session: Session, approval: Approval, now: datetime) -> None:
    from gallop.serving.registry import record_event

    approval.status = ApprovalStatus.EXPIRED.value
    approval.decided_at, approval.decided_by = now, TIMEOUT_ACTOR
    approval.reason = f"not decided by {approval.expires_at.isoformat()}"
    record_event(
        session,
        approval.dataset_id,
        CHAMPION,
        AliasAction.EXPIRE,
        actor=TIMEOUT_ACTOR,
        reason=f"approval request {approval.approval_id} expired: the champion stays",
        from_model=approval.champion_model,
        to_model=approval.champion_model,
        approval_id=approval.approval_id,
    )


def _subject(approval: Approval, what: str) -> str:
    dataset = (approval.comparison or {}).get("dataset", "")
    return f"gallop {dataset}: challenger {approval.challenger_model} {what}"
