"""The registered models and their aliases.

An alias (champion, challenger) names one registered model. Promoting updates its row
and writes `aliases/{alias}.json` in the artifacts bucket, one object replaced whole,
so a reader sees the old model or the new one; the predict path (gallop.serving.cache)
reads only that object and the model's files, so it needs no database.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gallop import layout, storage
from gallop.layout import alias_key
from gallop.storage import Store

if TYPE_CHECKING:  # the predict path imports no SQLAlchemy
    from sqlalchemy import Engine

    from gallop.metadata.models import RegisteredModel

ALIASES = ("champion", "challenger")


class ModelNotFound(LookupError):
    pass


class ModelUnreadable(LookupError):
    """A registered model (or an alias object) whose files are gone or are not what
    training writes: it cannot answer, and training it again is the cure."""


MODEL_ID = re.compile(r"^m-[0-9a-f]{16,64}$")  # m-{run id}: gallop.training.runs.model_id_for


def model_prefix(model_id: str) -> str:
    """Where a registered model's files are; ModelNotFound for what cannot be a model id
    (so no request turns arbitrary text into S3 keys or cache entries)."""
    if not MODEL_ID.match(model_id):
        raise ModelNotFound(f"no model {model_id[:80]!r}")
    return layout.model_prefix(model_id.removeprefix("m-"))


def get_model(engine: Engine, model_id: str) -> RegisteredModel:
    from gallop.metadata.db import session_scope
    from gallop.metadata.models import RegisteredModel

    with session_scope(engine) as session:
        model = session.get(RegisteredModel, model_id)
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


def aliases(engine: Engine) -> dict[str, str]:
    """alias -> model id."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import ModelAlias

    with session_scope(engine) as session:
        return {a.alias: a.model_id for a in session.scalars(select(ModelAlias))}


def promote(engine: Engine, artifacts: Store, model_id: str, alias: str) -> str | None:
    """Point the alias at the model; returns the model it named before (or None). The
    object is written inside the transaction: if it cannot be, the row is not changed."""
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}")
    from sqlalchemy.exc import IntegrityError

    model = get_model(engine, model_id)
    for key in (model.onnx_key, model.manifest_key):
        try:
            artifacts.head(key)
        except storage.ObjectMissing:
            raise ModelUnreadable(
                f"model {model_id!r} cannot be promoted: {key} is gone; train its run again"
            ) from None
    try:
        return _point(engine, artifacts, model_id, alias)
    except IntegrityError:  # a first promotion raced another's insert: the row is there now
        return _point(engine, artifacts, model_id, alias)


def _point(engine: Engine, artifacts: Store, model_id: str, alias: str) -> str | None:
    from gallop.metadata.db import session_scope
    from gallop.metadata.models import ModelAlias, utcnow

    with session_scope(engine) as session:
        row = session.get(ModelAlias, alias, with_for_update=True)
        previous = row.model_id if row else None
        if row is None:
            session.add(ModelAlias(alias=alias, model_id=model_id, updated_at=utcnow()))
        else:
            row.model_id = model_id
        session.flush()  # the row is written (or refused) before the object is
        artifacts.put_json(alias_key(alias), {"alias": alias, "model_id": model_id})
    return previous
