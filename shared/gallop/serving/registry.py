"""The registered models, each dataset's aliases, and the history of every move.

An alias (champion, challenger) belongs to a dataset and names one of that dataset's
models: the alias a model is promoted to is always its own dataset's, so a model cannot
serve another dataset's requests. Each change of an alias is one line of the dataset's
alias history (append-only), written in the transaction that moves the alias.

The predict path (gallop.serving.cache) needs no database: it reads one object per
dataset, `aliases/{dataset}/serving.json` (layout.serving_key), with the dataset's
champion, challenger and traffic policy. It is written whole, inside the transaction that
changes any of them, after the rows are flushed: if the object cannot be written, nothing
changes; a reader sees the old object or the new one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gallop import layout, storage
from gallop.storage import Store

if TYPE_CHECKING:  # the predict path imports no SQLAlchemy
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from gallop.metadata.models import AliasEvent, Dataset, RegisteredModel

ALIASES = ("champion", "challenger")
CHAMPION, CHALLENGER = ALIASES


class ModelNotFound(LookupError):
    pass


class ModelUnreadable(LookupError):
    """A registered model (or an alias object) whose files are gone or are not what
    training writes: it cannot answer, and training it again is the cure."""


class NothingToRollBack(LookupError):
    """The dataset's champion has no earlier value to go back to."""


MODEL_ID = re.compile(r"^m-[0-9a-f]{16,64}$")  # m-{run id}: gallop.training.runs.model_id_for


def model_prefix(model_id: str) -> str:
    """Where a registered model's files are; ModelNotFound for what cannot be a model id
    (so no request turns arbitrary text into S3 keys or cache entries)."""
    if not MODEL_ID.match(model_id):
        raise ModelNotFound(f"no model {model_id[:80]!r}")
    return layout.model_prefix(model_id.removeprefix("m-"))


@contextmanager
def _unit(engine: Engine, session: Session | None) -> Iterator[Session]:
    """The caller's transaction when it gives one (it commits), else one of our own."""
    if session is not None:
        yield session
        return
    from gallop.metadata.db import session_scope

    with session_scope(engine) as own:
        yield own


def get_model(engine: Engine, model_id: str, session: Session | None = None) -> RegisteredModel:
    from gallop.metadata.models import RegisteredModel

    with _unit(engine, session) as unit:
        model = unit.get(RegisteredModel, model_id)
        if model is None:
            raise ModelNotFound(f"no model {model_id!r}")
        return model


def list_models(engine: Engine) -> list[RegisteredModel]:
    return page_models(engine, None)[0]


def page_models(
    engine: Engine, limit: int | None, cursor: str | None = None, dataset_id: int | None = None
) -> tuple[list[RegisteredModel], str | None]:
    """A page of the registered models (of one dataset), newest first."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import RegisteredModel
    from gallop.metadata.repo import keyset_page

    query = select(RegisteredModel)
    if dataset_id is not None:
        query = query.where(RegisteredModel.dataset_id == dataset_id)
    order = [(RegisteredModel.created_at, True), (RegisteredModel.model_id, True)]
    with session_scope(engine) as session:
        return keyset_page(session, query, order, limit, cursor)


# -- reading the aliases ---------------------------------------------------------------


def aliases_of(engine: Engine, dataset_id: int) -> dict[str, str]:
    """The dataset's aliases: alias -> model id."""
    with _unit(engine, None) as session:
        return _aliases(session, dataset_id)


def _aliases(session: Session, dataset_id: int) -> dict[str, str]:
    from sqlalchemy import select

    from gallop.metadata.models import ModelAlias

    rows = session.scalars(select(ModelAlias).where(ModelAlias.dataset_id == dataset_id))
    return {row.alias: row.model_id for row in rows}


def alias_names(engine: Engine) -> dict[str, list[str]]:
    """model id -> the aliases naming it (a model is its own dataset's only)."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import ModelAlias

    names: dict[str, list[str]] = {}
    with session_scope(engine) as session:
        for row in session.scalars(select(ModelAlias).order_by(ModelAlias.alias)):
            names.setdefault(row.model_id, []).append(row.alias)
    return names


def history(
    engine: Engine, dataset_id: int, limit: int | None, cursor: str | None = None
) -> tuple[list[AliasEvent], str | None]:
    """A page of the dataset's alias history, newest first."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import AliasEvent
    from gallop.metadata.repo import keyset_page

    query = select(AliasEvent).where(AliasEvent.dataset_id == dataset_id)
    with session_scope(engine) as session:
        return keyset_page(session, query, [(AliasEvent.id, True)], limit, cursor)


# -- moving them -----------------------------------------------------------------------


def promote(
    engine: Engine,
    artifacts: Store,
    model_id: str,
    alias: str,
    *,
    actor: str,
    reason: str | None = None,
    action: str = "promote",
    approval_id: str | None = None,
    session: Session | None = None,
) -> str | None:
    """Point the model's dataset's alias at the model; returns the model it named before
    (or None). The alias row, its history line and the serving object change in one
    transaction (the caller's, when it gives `session`)."""
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}")
    with _unit(engine, session) as unit:
        model = get_model(engine, model_id, unit)
        _servable(artifacts, model, "promoted")
        dataset = locked_dataset(unit, model.dataset_id)
        if alias == CHAMPION and _aliases(unit, dataset.id).get(CHALLENGER) == model_id:
            _leave_challenger(unit, dataset.id, model_id, action, actor, approval_id)
        previous = _move(unit, dataset.id, alias, model_id)
        record_event(
            unit,
            dataset.id,
            alias,
            action,
            actor=actor,
            reason=reason,
            from_model=previous,
            to_model=model_id,
            approval_id=approval_id,
        )
        _publish(unit, artifacts, dataset)
    return previous


def _leave_challenger(
    session: Session,
    dataset_id: int,
    model_id: str,
    action: str,
    actor: str,
    approval_id: str | None,
) -> None:
    """A challenger made champion is no longer one (its history line comes first, the
    champion's last): a split or shadow policy would otherwise send the champion's own
    requests to it twice, and compare it with itself."""
    from gallop.metadata.models import ModelAlias

    row = session.get(ModelAlias, (dataset_id, CHALLENGER))
    if row is not None:
        session.delete(row)
        session.flush()
    record_event(
        session,
        dataset_id,
        CHALLENGER,
        action,
        actor=actor,
        reason="it became the champion",
        from_model=model_id,
        approval_id=approval_id,
    )


def rollback(
    engine: Engine, artifacts: Store, dataset_id: int, *, actor: str, reason: str | None = None
) -> tuple[str | None, str]:
    """The dataset's champion goes back one step: (the model it named, the one it names
    now). NothingToRollBack when it has no earlier value."""
    from gallop.metadata.models import AliasAction

    with _unit(engine, None) as unit:
        dataset = locked_dataset(unit, dataset_id)
        current = _aliases(unit, dataset_id).get(CHAMPION)
        stack = _champion_stack(unit, dataset_id)
        if stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise NothingToRollBack(
                f"dataset {dataset.name!r} has no earlier champion to go back to"
            )
        target = stack[-1]
        _servable(artifacts, get_model(engine, target, unit), "rolled back to")
        _move(unit, dataset_id, CHAMPION, target)
        record_event(
            unit,
            dataset_id,
            CHAMPION,
            AliasAction.ROLLBACK,
            actor=actor,
            reason=reason,
            from_model=current,
            to_model=target,
        )
        _publish(unit, artifacts, dataset)
    return current, target


def unregister_aliases(
    session: Session, artifacts: Store, model_id: str, *, actor: str, reason: str
) -> None:
    """The aliases naming a model that is being unregistered name nothing now: each
    change is a history line, and the serving objects are written again."""
    from sqlalchemy import select

    from gallop.metadata.models import AliasAction, ModelAlias

    rows = list(session.scalars(select(ModelAlias).where(ModelAlias.model_id == model_id)))
    for dataset_id in sorted({row.dataset_id for row in rows}):
        dataset = locked_dataset(session, dataset_id)
        for row in [r for r in rows if r.dataset_id == dataset_id]:
            session.delete(row)
            record_event(
                session,
                dataset_id,
                row.alias,
                AliasAction.UNREGISTER,
                actor=actor,
                reason=reason,
                from_model=model_id,
            )
        session.flush()
        _publish(session, artifacts, dataset)


def record_event(
    session: Session,
    dataset_id: int,
    alias: str,
    action: str,
    *,
    actor: str,
    reason: str | None = None,
    from_model: str | None = None,
    to_model: str | None = None,
    approval_id: str | None = None,
) -> AliasEvent:
    """One line of the dataset's alias history, in the caller's transaction (for a move,
    the one that moves the alias; alone, for what moves nothing: reject, expire)."""
    from gallop.metadata.models import AliasEvent, utcnow

    event = AliasEvent(
        dataset_id=dataset_id,
        alias=alias,
        action=str(action),
        from_model=from_model,
        to_model=to_model,
        actor=actor,
        reason=reason,
        approval_id=approval_id,
        at=utcnow(),
    )
    session.add(event)
    return event


def _servable(artifacts: Store, model: RegisteredModel, what: str) -> None:
    for key in (model.onnx_key, model.manifest_key):
        try:
            artifacts.head(key)
        except storage.ObjectMissing:
            raise ModelUnreadable(
                f"model {model.model_id!r} cannot be {what}: {key} is gone; train its run again"
            ) from None


def locked_dataset(session: Session, dataset_id: int) -> Dataset:
    """The dataset's row, locked until the transaction ends: changes to one dataset's
    aliases and policy take turns, so each serving object written is the last one's
    (SQLite takes one writer at a time anyway)."""
    from gallop.metadata.models import Dataset

    dataset = session.get(Dataset, dataset_id, with_for_update=True)
    if dataset is None:
        raise LookupError(f"no dataset with id {dataset_id}")
    return dataset


def _move(session: Session, dataset_id: int, alias: str, model_id: str) -> str | None:
    from gallop.metadata.models import ModelAlias, utcnow

    row = session.get(ModelAlias, (dataset_id, alias))
    previous = row.model_id if row else None
    if row is None:
        session.add(
            ModelAlias(dataset_id=dataset_id, alias=alias, model_id=model_id, updated_at=utcnow())
        )
    else:
        row.model_id = model_id
        row.updated_at = utcnow()
    return previous


# What puts a champion on the stack rollback pops (a rollback pops down to its target).
PUSHES = ("promote", "approve", "auto_promote", "migrate")


def _champion_stack(session: Session, dataset_id: int) -> list[str]:
    """The dataset's champions, oldest first, as its history leaves them: each promotion
    pushes (a model already on top is not pushed twice), a rollback pops down to its
    target; an unregistered model is left out (it cannot come back)."""
    from sqlalchemy import select

    from gallop.metadata.models import AliasAction, AliasEvent, RegisteredModel

    stack: list[str] = []
    events = session.scalars(
        select(AliasEvent)
        .where(AliasEvent.dataset_id == dataset_id, AliasEvent.alias == CHAMPION)
        .order_by(AliasEvent.id)
    )
    for event in events:
        if event.action in PUSHES and event.to_model and event.to_model != _top(stack):
            stack.append(event.to_model)
        elif event.action == AliasAction.ROLLBACK:
            while stack and stack[-1] != event.to_model:
                stack.pop()
    registered = set(
        session.scalars(
            select(RegisteredModel.model_id).where(RegisteredModel.dataset_id == dataset_id)
        )
    )
    kept: list[str] = []
    for model_id in stack:
        if model_id in registered and model_id != _top(kept):
            kept.append(model_id)
    return kept


def _top(stack: list[str]) -> str | None:
    return stack[-1] if stack else None


# -- the serving object ----------------------------------------------------------------

NO_POLICY = {"mode": "champion", "challenger_share": 0.0, "shadow_share": 0.0}


def serving_document(session: Session, dataset: Dataset) -> dict[str, Any]:
    """What `aliases/{dataset}/serving.json` says: the aliases and the traffic policy as
    served (a policy that needs a challenger, while there is none, is served as champion)."""
    from gallop.metadata.models import TrafficMode, TrafficPolicy, utcnow

    named = _aliases(session, dataset.id)
    policy = session.get(TrafficPolicy, dataset.id)
    traffic = dict(NO_POLICY)
    if policy is not None and (policy.mode == TrafficMode.CHAMPION or "challenger" in named):
        traffic = {
            "mode": policy.mode,
            "challenger_share": policy.challenger_share,
            "shadow_share": policy.shadow_share,
        }
    return {
        "dataset": dataset.name,
        "champion": named.get("champion"),
        "challenger": named.get("challenger"),
        "traffic": traffic,
        "updated_at": utcnow().isoformat(),
    }


def _publish(session: Session, artifacts: Store, dataset: Dataset) -> None:
    session.flush()  # the rows are written (or refused) before the object is
    artifacts.put_json(layout.serving_key(dataset.name), serving_document(session, dataset))


def publish_serving(
    engine: Engine, artifacts: Store, dataset_id: int, session: Session | None = None
) -> None:
    """Write the dataset's serving object again from the rows (in the caller's
    transaction when it gives one: a traffic policy changes with its object)."""
    with _unit(engine, session) as unit:
        _publish(unit, artifacts, locked_dataset(unit, dataset_id))


def publish_all(engine: Engine, artifacts: Store) -> None:
    """Every dataset's serving object, from the rows, and the objects of the aliases of
    the whole installation (before 0011) gone: run after migrating. Idempotent."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import Dataset

    with session_scope(engine) as session:
        dataset_ids = list(session.scalars(select(Dataset.id).order_by(Dataset.id)))
    for dataset_id in dataset_ids:
        publish_serving(engine, artifacts, dataset_id)
    for alias in ALIASES:
        artifacts.delete(layout.legacy_alias_key(alias))
