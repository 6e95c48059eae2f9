"""Predictions and explanations, and the registered models with their aliases.

/v1/predict and /v1/explain read the body themselves (orjson, one vectorised validation
pass in gallop.serving.predict) instead of through pydantic: on a 12-runner race the
framework, not the model, is the cost. Their schema is still in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from gallop.api.auth import check_api_key
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


def model_cache(request: Request) -> ModelCache:
    state = request.app.state
    if not hasattr(state, "models"):
        state.models = ModelCache(state.artifacts, state.settings.alias_ttl_seconds)
    cache: ModelCache = state.models
    return cache


async def _answer(request: Request, explain: bool) -> Response:
    # The key is checked here, not as a FastAPI dependency: solving dependencies costs
    # a tenth of a millisecond a request, a sixth of the predict function's budget.
    check_api_key(request, request.headers.get("x-api-key"))
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MB")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    try:
        model = model_cache(request).resolve(body.get("model", "champion"))
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    try:
        columns, values = _completed(request, model, *parse(model, body))
        reply = (
            explain_columns(model, columns, values, body.get("top_k", 5))
            if explain
            else predict_columns(model, columns, values)
        )
    except InputError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    payload = orjson.dumps(reply)
    if len(payload) > MAX_REPLY_BYTES:
        raise HTTPException(
            413,
            f"the reply would be {len(payload) / 2**20:.1f} MB, over the "
            f"{MAX_REPLY_BYTES // 2**20} MB a reply may be: send fewer rows per request",
        )
    return Response(payload, media_type="application/json")


def _completed(
    request: Request, model: Any, columns: list[str], values: list[list[Any]]
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
        state = request.app.state.snapshots(prefix + SNAPSHOT)
    except ObjectMissing:
        raise InputError(
            "the model's entity snapshot is gone: send full feature rows", 409
        ) from None
    card = [dict(zip(columns, row, strict=True)) for row in values]
    try:
        names, matrix = card_features(card, state, manifest["feature_spec_hash"])
    except CardError as exc:
        raise InputError(f"race card: {exc}") from None
    at = [names.index(f) for f in model.features]
    group = [model.group] if model.group else []
    data = [
        [None if v != v else v for v in features] + [row.get(g) for g in group]
        for features, row in zip(matrix[:, at].tolist(), card, strict=True)
    ]
    return model.features + group, data


@router.post("/v1/predict", openapi_extra=_schema(PredictBody))
async def predict(request: Request) -> Response:
    """Score, and per task: win and place probability and rank (ranking), probability
    (binary), value with its interval (regression); one prediction per row, in order."""
    return await _answer(request, explain=False)


@router.post("/v1/explain", openapi_extra=_schema(ExplainBody))
async def explain(request: Request) -> Response:
    """Per row: each feature's part of the stacked score (they add up, with the base
    value, to the score) and the top reasons in plain words."""
    return await _answer(request, explain=True)


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
