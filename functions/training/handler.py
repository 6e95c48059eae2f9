"""training Lambda: the end of a training state machine execution → the model registered
(action "register") or the run FAILED with the reason (action "failed")."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from gallop.metadata.db import engine_for
from gallop.observability import discard_unpublished, logger, metrics
from gallop.settings import get_settings
from gallop.storage import Store
from gallop.training.events import handle

# A function deployed without its configuration fails at cold start, naming what is missing.
settings = get_settings().require_for("training")
log, meter = logger("gallop-training"), metrics("gallop-training")
artifacts = Store.artifacts_from_settings(settings)


@log.inject_lambda_context(correlation_id_path="run_id", clear_state=True)
@meter.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        outcome = handle(event, engine_for(settings.sqlalchemy_url), artifacts)
        log.info("training run settled", extra=outcome)
        meter.add_metric(name=f"Runs{outcome['status'].title()}", unit=MetricUnit.Count, value=1)
        return outcome
    finally:
        discard_unpublished(meter)
