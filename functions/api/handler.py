"""api Lambda: API Gateway events → FastAPI, through Mangum."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from gallop.api.app import create_app, meter
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("api")

# lifespan="off": start-up work would otherwise run on every invocation.
# /v1/predict and /v1/explain are routed to the predict function, which has onnxruntime.
asgi = Mangum(create_app(serve_predictions=False), lifespan="off")


@meter.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi(event, context)
