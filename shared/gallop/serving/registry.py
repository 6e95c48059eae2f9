"""The registered models and their aliases.

An alias (champion, challenger) names one registered model. Promoting updates its row
and writes `aliases/{alias}.json` in the artifacts bucket, one object replaced whole,
so a reader sees the old model or the new one; the predict path (gallop.serving.cache)
reads only that object and the model's files, so it needs no database.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gallop import storage
from gallop.storage import Store

if TYPE_CHECKING:  # the predict path imports no SQLAlchemy
    from sqlalchemy import Engine

    from gallop.metadata.models import RegisteredModel

ALIASES = ("champion", "challenger")


class ModelNotFound(LookupError):
    pass


def alias_key(alias: str) -> str:
    return f"aliases/{alias}.json"


MODEL_ID = re.compile(r"^m-[0-9a-f]{16,64}$")  # m-{run id}: gallop.training.runs.model_id_for


def model_prefix(model_id: str) -> str:
    """Where a registered model's files are; ModelNotFound for what cannot be a model id
    (so no request turns arbitrary text into S3 keys or cache entries)."""
    if not MODEL_ID.match(model_id):
        raise ModelNotFound(f"no model {model_id[:80]!r}")
    return storage.model_prefix(model_id.removeprefix("m-"))


def get_model(engine: Engine, model_id: str) -> RegisteredModel:
    from gallop.metadata.db import session_scope
    from gallop.metadata.models import RegisteredModel

    with session_scope(engine) as session:
        model = session.get(RegisteredModel, model_id)
        if model is None:
            raise ModelNotFound(f"no model {model_id!r}")
        return model


def list_models(engine: Engine) -> list[RegisteredModel]:
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import RegisteredModel

    with session_scope(engine) as session:
        query = select(RegisteredModel).order_by(RegisteredModel.created_at.desc())
        return list(session.scalars(query))


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

    get_model(engine, model_id)
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
