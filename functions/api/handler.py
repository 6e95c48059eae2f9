"""api Lambda: API Gateway events → FastAPI, through Mangum."""

from __future__ import annotations

from typing import Any

from gallop.api.app import create_app, meter
from gallop.api.gateway import asgi_handler
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("api")

# /v1/predict and /v1/explain are routed to the predict function, which has onnxruntime.
asgi = asgi_handler(create_app(serve_predictions=False))


@meter.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi(event, context)
