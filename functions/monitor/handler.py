"""monitor Lambda: on its EventBridge schedule, one monitor run over every serving model:
live quality from results that arrived, drift once enough predictions were captured, the
metrics (EMF) the alarms watch, and each model's monitoring page."""

from __future__ import annotations

from typing import Any

from gallop.monitoring.run import monitor_all
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
settings = get_settings().require_for("monitor")


def handler(event: dict[str, Any], context: Any) -> Any:
    # The scheduled event carries nothing to act on: the run's cursor is in the database.
    return monitor_all(settings)
