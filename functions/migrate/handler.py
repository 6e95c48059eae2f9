"""migrate Lambda: a CloudFormation custom resource that brings the metadata schema to
the newest Alembic migration on every deploy (Create and Update), then writes every
dataset's serving object from the rows (a migration may have moved aliases); Delete keeps
data."""

from __future__ import annotations

from typing import Any

from gallop.metadata.db import engine_for, migrate
from gallop.observability import logger
from gallop.serving.registry import publish_all
from gallop.settings import get_settings
from gallop.storage import Store

log = logger("gallop-migrate")


@log.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = get_settings().require_for("migrate")
    request = event["RequestType"]
    if request in ("Create", "Update"):
        engine = engine_for(settings.sqlalchemy_url)
        migrate(engine)
        publish_all(engine, Store.artifacts_from_settings(settings))
        log.info("metadata schema migrated, serving objects written", extra={"request": request})
    # One physical resource for the life of the stack, whatever the request.
    return {"PhysicalResourceId": "gallop-metadata-schema"}
