"""Predictions and explanations, and the registered models with their aliases.

/v1/predict and /v1/explain read the body themselves (orjson, one vectorised validation
pass in gallop.serving.predict) instead of through pydantic: on a 12-runner race the
framework, not the model, is the cost. Their schema is still in the OpenAPI document.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from gallop.api.auth import key_refusal
from gallop.features.state import SNAPSHOT, cached_snapshots
from gallop.serving.cache import ModelCache
from gallop.serving.predict import InputError, explain_columns, is_card, parse, predict_columns
from gallop.serving.registry import ModelNotFound

# predict/explain need only the artifacts (and data) bucket and onnxruntime: the predict
# function serves them (gallop.api.models has the routes that use the database).
router = APIRouter(tags=["serving"])
MAX_BODY_BYTES = 6 * 1024 * 1024  # API Gateway's and Lambda's payload limit
# Lambda's reply is capped at 6 MB too, the body escaped inside its JSON envelope: past
# that API Gateway answers 502. Explanations of 1,000 rows of many features can get there.
MAX_REPLY_BYTES = 5 * 1024 * 1024
Value = float | str | None
DIRECT_PATHS = ("/v1/predict", "/v1/explain")


class PredictBody(BaseModel):
    """Rows as objects, or as columns and data; race-card rows (entity ids and pre-race
    fields) are completed from the entity snapshot of the model's data version."""

    model: str = Field("champion", description="champion, challenger or a model id")
    rows: list[dict[str, Value]] | None = Field(None, min_length=1, max_length=1000)
    columns: list[str] | None = None
    data: list[list[Value]] | None = Field(None, min_length=1, max_length=1000)


class ExplainBody(PredictBody):
    top_k: int = Field(5, ge=1, description="reasons per row")


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def model_cache(state: Any) -> ModelCache:
    """The app's loaded models (its `state`), made on first use."""
    if not hasattr(state, "models"):
        state.models = ModelCache(state.artifacts, state.settings.alias_ttl_seconds)
    cache: ModelCache = state.models
    return cache


class Refused(Exception):
    """A request answered with an error: the HTTP status and what to tell the caller."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def answer(
    state: Any, key: str | None, event: dict[str, Any] | None, raw: bytes, explain: bool
) -> tuple[int, bytes]:
    """(status, JSON body) for a predict or explain request: `state` is the app's (settings,
    stores, caches), `event` the API Gateway event on Lambda. The route and the predict
    function's direct path (answer_event) both answer through here; an error's body is
    `{"detail": ...}`, as FastAPI writes an HTTPException's."""
    try:
        return 200, _answer(state, key, event, raw, explain)
    except Refused as exc:
        return exc.status, orjson.dumps({"detail": exc.detail})


def _answer(
    state: Any, key: str | None, event: dict[str, Any] | None, raw: bytes, explain: bool
) -> bytes:
    refusal = key_refusal(state.settings, key, event)
    if refusal:
        raise Refused(401, refusal)
    if len(raw) > MAX_BODY_BYTES:
        raise Refused(413, f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MB")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(422, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(422, "the body must be a JSON object")
    try:
        model = model_cache(state).resolve(body.get("model", "champion"))
    except ModelNotFound as exc:
        raise Refused(404, str(exc)) from None
    try:
        columns, values = _completed(state, model, *parse(model, body))
        reply = (
            explain_columns(model, columns, values, body.get("top_k", 5))
            if explain
            else predict_columns(model, columns, values)
        )
    except InputError as exc:
        raise Refused(exc.status, str(exc)) from None
    payload = orjson.dumps(reply)
    if len(payload) > MAX_REPLY_BYTES:
        raise Refused(
            413,
            f"the reply would be {len(payload) / 2**20:.1f} MB, over the "
            f"{MAX_REPLY_BYTES // 2**20} MB a reply may be: send fewer rows per request",
        )
    return payload


def answer_event(state: Any, event: dict[str, Any]) -> dict[str, Any] | None:
    """The reply to an API Gateway (REST) event for POST /v1/predict or /v1/explain,
    answered straight from the event; None for any other event, which goes through the
    app. The ASGI round trip (Mangum, Starlette, FastAPI) took about half of a 12-runner
    prediction's 0.7 ms, the model a sixth."""
    if event.get("httpMethod") != "POST" or event.get("path") not in DIRECT_PATHS:
        return None
    headers = event.get("headers") or {}
    key = next((v for k, v in headers.items() if k.lower() == "x-api-key"), None)
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    status, payload = answer(state, key, event, body, event["path"] == "/v1/explain")
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "content-length": str(len(payload))},
        "multiValueHeaders": {},
        "body": payload.decode(),
        "isBase64Encoded": False,
    }


def _completed(
    state: Any, model: Any, columns: list[str], values: list[list[Any]]
) -> tuple[list[str], list[list[Any]]]:
    """Race-card rows become feature rows, computed from the entity snapshot of the data
    the model was trained on; other rows pass as they are."""
    if not is_card(model, columns):
        return columns, values
    from gallop.features.online import CardError, card_features
    from gallop.storage import ObjectMissing, features_prefix

    manifest = model.manifest
    prefix = features_prefix(
        manifest["dataset"], manifest["data_version"], manifest["feature_spec_hash"]
    )
    try:
        snapshot = state.snapshots(prefix + SNAPSHOT)
    except ObjectMissing:
        raise InputError(
            "the model's entity snapshot is gone: send full feature rows", 409
        ) from None
    card = [dict(zip(columns, row, strict=True)) for row in values]
    try:
        names, matrix = card_features(card, snapshot, manifest["feature_spec_hash"])
    except CardError as exc:
        raise InputError(f"race card: {exc}") from None
    at = [names.index(f) for f in model.features]
    group = [model.group] if model.group else []
    data = [
        [None if v != v else v for v in features] + [row.get(g) for g in group]
        for features, row in zip(matrix[:, at].tolist(), card, strict=True)
    ]
    return model.features + group, data


async def _route(request: Request, explain: bool) -> Response:
    key = request.headers.get("x-api-key")
    event = request.scope.get("aws.event")
    status, payload = answer(request.app.state, key, event, await request.body(), explain)
    return Response(payload, status_code=status, media_type="application/json")


@router.post("/v1/predict", openapi_extra=_schema(PredictBody))
async def predict(request: Request) -> Response:
    """Score, and per task: win and place probability and rank (ranking), probability
    (binary), value with its interval (regression); one prediction per row, in order."""
    return await _route(request, explain=False)


@router.post("/v1/explain", openapi_extra=_schema(ExplainBody))
async def explain(request: Request) -> Response:
    """Per row: each feature's part of the stacked score (they add up, with the base
    value, to the score) and the top reasons in plain words."""
    return await _route(request, explain=True)


def create_predict_app(settings: Any = None) -> Any:
    """The predict function's app: /v1/predict and /v1/explain only, nothing else
    imported (no database, no pandas), for a small bundle and a quick cold start."""
    from functools import cache

    from fastapi import FastAPI

    from gallop.settings import get_settings
    from gallop.storage import Store

    settings = settings or get_settings()
    app = FastAPI(title="gallop predict")  # the routes check the API key themselves
    app.state.settings = settings
    app.state.store = cache(lambda: Store.from_settings(settings))
    app.state.artifacts = cache(lambda: Store.artifacts_from_settings(settings))

    app.state.snapshots = cached_snapshots(lambda key: app.state.store().get_bytes(key))
    app.include_router(router)
    return app
