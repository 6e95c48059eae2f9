"""predict Lambda: POST /v1/predict and /v1/explain on onnxruntime and numpy only (no
database, no pandas): API Gateway routes those two paths here. They are answered straight
from the event; anything else (the docs, a wrong method) goes through the app and Mangum."""

from __future__ import annotations

from typing import Any

from gallop.api.gateway import asgi_handler
from gallop.api.serving import answer_event, create_predict_app
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
settings = get_settings().require_for("predict")

app = create_predict_app(settings)
asgi = asgi_handler(app)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return answer_event(app.state, event) or asgi(event, context)
