"""predict Lambda: POST /v1/predict and /v1/explain, through Mangum, on onnxruntime and
numpy only (no database, no pandas): API Gateway routes those two paths here."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from gallop.api.serving import create_predict_app
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
settings = get_settings().require_for("predict")

# lifespan="off": start-up work would otherwise run on every invocation.
asgi = Mangum(create_predict_app(settings), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi(event, context)
