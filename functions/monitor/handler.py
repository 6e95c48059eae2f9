"""monitor Lambda: captured predictions scored against the results that followed (live
quality), drift of what the models were sent, the metrics (EMF) the alarms watch, and
each model's monitoring page, and renewal (comparisons, approval requests, retraining
policies). Four triggers: ingest's announcements of new VALID versions (SQS: results
arrived), the EventBridge schedule, the API (check now), and the renewal state machine
(an approval request's task token, its timeout)."""

from __future__ import annotations

from typing import Any

from gallop.monitoring.run import MonitorWorker, scheduled_or_asked
from gallop.observability import sqs_batch_handler
from gallop.renewal.approvals import state_machine_event
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
settings = get_settings().require_for("monitor")

on_messages = sqs_batch_handler("gallop-monitor", MonitorWorker)


def handler(event: dict[str, Any], context: Any) -> Any:
    if "Records" in event:
        return on_messages(event, context)
    if "renewal" in event:
        return state_machine_event(settings, event)
    return scheduled_or_asked(settings, event)
