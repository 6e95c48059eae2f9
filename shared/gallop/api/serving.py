"""Predictions and explanations, and the registered models with their aliases.

/v1/predict and /v1/explain read the body themselves (orjson, one vectorised validation
pass in gallop.serving.predict) instead of through pydantic: on a 12-runner race the
framework, not the model, is the cost. Their schema is still in the OpenAPI document.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal, NamedTuple

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gallop.api import problems
from gallop.api.auth import CHALLENGE, key_refusal
from gallop.api.limits import BodyLimit, too_large
from gallop.features.state import cached_snapshots
from gallop.layout import SNAPSHOT_FILE
from gallop.monitoring.capture import Capture, Served, Shadow, correlation_id
from gallop.serving.cache import (
    CHALLENGER,
    CHAMPION,
    SPLIT,
    ModelCache,
    PointerCache,
    Target,
    TargetError,
    Traffic,
)
from gallop.serving.model import LoadedModel
from gallop.serving.predict import (
    InputError,
    check_top_k,
    explain_columns,
    explain_features,
    feature_matrix,
    group_ids,
    is_card,
    parse,
    predict_features,
)
from gallop.serving.registry import ModelNotFound, ModelUnreadable
from gallop.serving.traffic import Part, Route, race_keys, route

# predict/explain need only the artifacts (and data) bucket and onnxruntime: the predict
# function serves them (gallop.api.models has the routes that use the database).
router = APIRouter(tags=["serving"])
# Lambda's reply is capped at 6 MB too, the body escaped inside its JSON envelope: past
# that API Gateway answers 502. Explanations of 1,000 rows of many features can get there.
MAX_REPLY_BYTES = 5 * 1024 * 1024
Value = float | str | None
DIRECT_PATHS = ("/v1/predict", "/v1/explain")
CORRELATION_HEADER = "x-correlation-id"  # a caller's own id for a request (captured with it)
# Which entity snapshot completes a race card: the newest READY one, or the training one.
ONLINE, TRAINING = "online", "training"
SNAPSHOTS = (ONLINE, TRAINING)


class PredictBody(BaseModel):
    """Rows as objects, or as columns and data; race-card rows (entity ids and pre-race
    fields) are completed from an entity snapshot of the model's dataset: the newest READY
    one built with the model's feature spec, or the one it was trained on."""

    dataset: str | None = Field(
        None,
        description="The dataset whose champion or challenger answers. Without it, an alias "
        "is the one dataset's that has it (422 naming them when more than one has); with a "
        "model id it is checked (422 when the model is another dataset's).",
    )
    model: str = Field(
        "champion",
        description="champion, challenger or a model id. A request for the champion follows "
        "the dataset's traffic policy (split: a share of races answered by the challenger; "
        "shadow: the other model scores a share of races off the reply path, captured); one "
        "for the challenger or a model id is answered by that model alone.",
    )
    rows: list[dict[str, Value]] | None = Field(None, min_length=1, max_length=1000)
    columns: list[str] | None = None
    data: list[list[Value]] | None = Field(None, min_length=1, max_length=1000)
    snapshot: Literal["online", "training"] = Field(
        "online",
        description="Race cards only: complete the card from the newest READY entity "
        "snapshot of the model's dataset (online; the training one until a newer is READY) "
        "or from the snapshot the model was trained on (training), to reproduce an old "
        "answer. Feature rows are not completed: for them it is only checked.",
    )


class ExplainBody(PredictBody):
    top_k: int = Field(5, ge=1, description="reasons per row")


class Prediction(BaseModel):
    """One row's prediction; which members it has depends on the task."""

    model_config = ConfigDict(extra="allow")  # a regression model's interval, by name

    score: float = Field(description="The stack's score.")
    win_probability: float | None = Field(None, description="ranking")
    place_probability: float | None = Field(None, description="ranking")
    rank: int | None = Field(None, description="ranking: 1 is the likeliest winner")
    probability: float | None = Field(None, description="binary")
    model_id: str | None = Field(
        None,
        description="Under a split policy only: the model that answered this row (all the "
        "rows of a race get the same one).",
    )


class FeaturesAsOf(BaseModel):
    """Which entity snapshot completed a race card."""

    version_id: str = Field(description="The dataset version the snapshot was built from.")
    data_end: str | None = Field(
        description="ISO 8601 (UTC): the start of the newest race in it. A card for a race "
        "that starts at or before it is refused (409): its features would see the future."
    )
    snapshot: Literal["online", "training"] = Field(
        description="online: the newest READY snapshot; training: the model's own."
    )


AS_OF = "Race cards only (absent for feature rows): the snapshot that completed the card."


class PredictReply(BaseModel):
    """The reply the route writes itself (orjson): this model documents it."""

    model_id: str = Field(
        description="The model that answered (an alias resolved); under a split policy, the "
        "first row's."
    )
    predictions: list[Prediction] = Field(description="One per row, in order.")
    features_as_of: FeaturesAsOf | None = Field(None, description=AS_OF)


class Reason(BaseModel):
    feature: str
    value: Any = Field(description="The feature's value, as shown.")
    contribution: float
    reason: str = Field(description="In plain words.")


class Explanation(BaseModel):
    score: float = Field(description="base_value plus every contribution.")
    base_value: float
    contributions: dict[str, float] = Field(description="Each feature's part of the score.")
    top: list[Reason] = Field(description="The top_k largest parts, largest first.")


class ExplainReply(BaseModel):
    model_id: str
    explanations: list[Explanation] = Field(description="One per row, in order.")
    features_as_of: FeaturesAsOf | None = Field(None, description=AS_OF)


SERVING_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No model by that id, or the dataset's alias names none"},
    409: {
        "description": "The model's files (or entity snapshot) are gone: train it again; or "
        "a race card's race starts at or before the newest race of its entity snapshot"
    },
    413: {"description": "The body, or the reply it would get, is too large"},
    422: {
        "description": "The rows are not what the model takes; a race card's `problems`; an "
        "alias without a dataset that several datasets have; a model of another dataset"
    },
}


def _responses(reply: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": reply}, **SERVING_ERRORS}


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
    """A request answered with an error: the HTTP status, what to tell the caller and, for
    a race card, the problems of its rows."""

    def __init__(self, status: int, detail: str, problems: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.problems = status, detail, problems or []


def answer(
    state: Any,
    key: str | None,
    event: dict[str, Any] | None,
    raw: bytes,
    explain: bool,
    correlation: str | None = None,
) -> tuple[int, bytes]:
    """(status, JSON body) for a predict or explain request: `state` is the app's (settings,
    stores, caches), `event` the API Gateway event on Lambda, `correlation` the caller's
    x-correlation-id. The route and the predict function's direct path (answer_event) both
    answer through here; an error's body is a problem (gallop.api.problems), with
    `problems` when a race card breaks ingestion's rules (each as an ingestion report
    lists it). An answered prediction is captured (gallop.monitoring.capture) when the
    settings name a capture stream."""
    try:
        return 200, _answer(state, key, event, raw, explain, correlation)
    except Refused as exc:
        listed = {"problems": exc.problems} if exc.problems else {}
        return exc.status, problems.problem_bytes(exc.status, exc.detail, **listed)


def reply_headers(status: int) -> dict[str, str]:
    """The content type (and, for a 401, the challenge) of answer()'s reply."""
    if status < 400:
        return {"content-type": "application/json"}
    return {"content-type": problems.MEDIA_TYPE} | (CHALLENGE if status == 401 else {})


def capture_of(state: Any) -> Capture | None:
    """The app's capture (its `state`), made on first use; None when capture is off."""
    if not hasattr(state, "capture"):
        state.capture = Capture.from_settings(state.settings)
    capture: Capture | None = state.capture
    return capture


def _answer(
    state: Any,
    key: str | None,
    event: dict[str, Any] | None,
    raw: bytes,
    explain: bool,
    correlation: str | None = None,
) -> bytes:
    limit = state.settings.max_rows_body_bytes  # as BodyLimit does in the app: size first
    if len(raw) > limit:
        raise Refused(413, too_large(limit))
    refusal = key_refusal(state.settings, key, event)
    if refusal:
        raise Refused(401, refusal)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(422, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(422, "the body must be a JSON object")
    snapshot = body.get("snapshot", ONLINE)
    if snapshot not in SNAPSHOTS:
        raise Refused(
            422,
            f"'snapshot' must be {ONLINE!r} (a race card completed from the newest entity "
            f"snapshot, the default) or {TRAINING!r} (from the one the model was trained on)",
        )
    top_k = body.get("top_k", 5)
    request_id = None  # made when needed: a new one is a uuid4
    cache = model_cache(state)
    try:
        target = cache.target(body.get("model", CHAMPION), body.get("dataset"))
        asked = Asked(*parse(target.model, body), snapshot)
        columns, values = asked.columns, asked.values
        # The champion explains: an explanation is of one model, never split.
        policy = Traffic() if explain else target.policy
        plan: Route | None = None
        keys: list[str] = []
        if explain:
            parts = [_explained(state, target.model, asked, top_k)]
        elif policy.mode == CHAMPION:
            parts = [_part(state, target.model, target.alias, None, asked)]
        else:
            request_id = correlation_id(event, correlation)
            keys = race_keys(target.model, columns, values, request_id)
            plan = route(policy, keys)
            parts = []
            for part in plan.answered:  # scored per model, put back in row order below
                model, alias = _model_of(cache, target, part.champion)
                rows = _rows(part, plan)
                parts.append(_part(state, model, alias, rows, asked))
    except ModelNotFound as exc:
        raise Refused(404, str(exc)) from None
    except ModelUnreadable as exc:
        raise Refused(409, str(exc)) from None
    except TargetError as exc:
        raise Refused(422, str(exc)) from None
    except InputError as exc:
        raise Refused(exc.status, str(exc), exc.problems) from None
    reply = _merged(parts, len(values), split=policy.mode == SPLIT)
    payload = orjson.dumps(reply)
    if len(payload) > MAX_REPLY_BYTES:
        raise Refused(
            413,
            f"the reply would be {len(payload) / 2**20:.1f} MB, over the "
            f"{MAX_REPLY_BYTES // 2**20} MB a reply may be: send fewer rows per request",
        )
    capture = None if explain else capture_of(state)
    if capture is not None:
        request_id = request_id or correlation_id(event, correlation)
        _capture(capture, state, cache, target, parts, plan, keys, asked, request_id)
    return payload


class Asked(NamedTuple):
    """A request's rows, as parse read them, and the snapshot a race card asks for."""

    columns: list[str]
    values: list[list[Any]]
    snapshot: str

    def taken(self, rows: list[int] | None) -> list[list[Any]]:
        """The values of those rows (places in the request); None: all of them."""
        return self.values if rows is None else [self.values[i] for i in rows]


class Scored(NamedTuple):
    """What one model answered for some of a request's rows (`rows`, their places; None:
    all of them), and the matrix it saw (kept for capture: not read twice)."""

    model: LoadedModel
    alias: str | None
    rows: list[int] | None
    reply: dict[str, Any]
    features: np.ndarray | None
    groups: np.ndarray | None
    as_of: dict[str, Any] | None


def _model_of(cache: ModelCache, target: Target, champion: bool) -> tuple[LoadedModel, str]:
    if champion:
        return target.model, CHAMPION
    challenger = target.serving.challenger if target.serving else None
    assert challenger is not None  # a policy that routes needs one (Serving.policy)
    return cache.model(challenger), CHALLENGER


def _rows(part: Part, plan: Route) -> list[int] | None:
    return part.rows if len(plan.answered) > 1 else None


def _part(
    state: Any,
    model: LoadedModel,
    alias: str | None,
    rows: list[int] | None,
    asked: Asked,
) -> Scored:
    """Predictions of `model` for the rows (places) of the request, as a race card
    (completed) or as feature rows, whichever they are to this model."""
    columns, mine = asked.columns, asked.taken(rows)
    features = groups = as_of = None
    if is_card(model, columns):
        features, groups, as_of = _completed(state, model, columns, mine, asked.snapshot)
        reply = predict_features(model, features, groups)
        reply["features_as_of"] = as_of
    else:
        features, groups = feature_matrix(model, columns, mine)
        reply = predict_features(model, features, groups)
    return Scored(model, alias, rows, reply, features, groups, as_of)


def _explained(state: Any, model: LoadedModel, asked: Asked, top_k: Any) -> Scored:
    columns, values = asked.columns, asked.values
    if is_card(model, columns):
        check_top_k(model, top_k)
        features, _, as_of = _completed(state, model, columns, values, asked.snapshot)
        reply = explain_features(model, features, top_k)
        reply["features_as_of"] = as_of
        return Scored(model, None, None, reply, features, None, as_of)
    return Scored(
        model, None, None, explain_columns(model, columns, values, top_k), None, None, None
    )


def _merged(parts: list[Scored], n: int, split: bool) -> dict[str, Any]:
    """One reply in row order from the parts; under a split policy every prediction names
    its model, and the top-level model_id is the first row's."""
    first = parts[0].reply
    if not split:
        return first
    predictions: list[Any] = [None] * n
    for part in parts:
        at = range(n) if part.rows is None else part.rows
        model_id = part.model.model_id
        for i, prediction in zip(at, part.reply["predictions"], strict=True):
            predictions[i] = prediction | {"model_id": model_id}  # capture keeps the original
    return {**first, "predictions": predictions}


def _capture(
    capture: Capture,
    state: Any,
    cache: ModelCache,
    target: Target,
    parts: list[Scored],
    plan: Route | None,
    keys: list[str],
    asked: Asked,
    request_id: str,
) -> None:
    """References onto capture's queue (the sender thread writes and sends them), and,
    under a shadow or split policy, the shadow jobs the sender runs: the whole request is
    in capture's sample or not, by its first race."""
    sample_key = keys[0] if keys else None
    if sample_key is not None and not capture.takes(sample_key):
        return
    for part in parts:
        as_of = part.as_of["version_id"] if part.as_of else None
        capture.capture(
            part.model,
            part.alias,
            asked.columns,
            asked.taken(part.rows),
            part.reply["predictions"],
            request_id,
            features=part.features,
            groups=part.groups,
            features_as_of=as_of,
            rows=part.rows,
            sample_key=sample_key,
        )
    for shadowed in plan.shadowed if plan else []:
        capture.shadow(_shadow_job(state, cache, target, shadowed, asked, request_id))


def _shadow_job(
    state: Any,
    cache: ModelCache,
    target: Target,
    shadowed: Part,
    asked: Asked,
    request_id: str,
) -> Shadow:
    """The model that did not answer these rows scores them, in the sender thread: its
    loading and its errors are its own, never the reply's."""
    serving = target.serving
    assert serving is not None  # only a champion request of a dataset is shadowed
    alias = CHAMPION if shadowed.champion else CHALLENGER
    model_id = serving.named(alias)
    assert model_id is not None
    at = time.time()  # when the request was answered, as its served rows have it

    def score() -> Served:
        model = cache.model(model_id)
        part = _part(state, model, alias, shadowed.rows, asked)
        return Served(
            at,
            model,
            alias,
            asked.columns,
            asked.taken(part.rows),
            part.features,
            part.groups,
            part.reply["predictions"],
            request_id,
            part.as_of["version_id"] if part.as_of else None,
            part.rows,
            shadow=True,
        )

    return Shadow(model_id, serving.dataset, len(shadowed.rows), score)


def answer_event(state: Any, event: dict[str, Any]) -> dict[str, Any] | None:
    """The reply to an API Gateway (REST) event for POST /v1/predict or /v1/explain,
    answered straight from the event; None for any other event, which goes through the
    app. The ASGI round trip (Mangum, Starlette, FastAPI) took about half of a 12-runner
    prediction's 0.7 ms, the model a sixth."""
    if event.get("httpMethod") != "POST" or event.get("path") not in DIRECT_PATHS:
        return None
    headers = event.get("headers") or {}
    key = correlation = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "x-api-key" and key is None:  # the first, as before
            key = value
        elif lowered == CORRELATION_HEADER and correlation is None:
            correlation = value
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    explain = event["path"] == "/v1/explain"
    status, payload = answer(state, key, event, body, explain, correlation)
    return {
        "statusCode": status,
        "headers": reply_headers(status) | {"content-length": str(len(payload))},
        "multiValueHeaders": {},
        "body": payload.decode(),
        "isBase64Encoded": False,
    }


def pointer_cache(state: Any) -> PointerCache:
    """The app's online pointers (its `state`), made on first use."""
    if not hasattr(state, "pointers"):
        state.pointers = PointerCache(state.store, state.settings.alias_ttl_seconds)
    pointers: PointerCache = state.pointers
    return pointers


def _completed(
    state: Any, model: Any, columns: list[str], values: list[list[Any]], snapshot: str
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """A race card's feature matrix (the model's order), its group ids and which entity
    snapshot it was completed from: the newest READY one of the model's dataset under the
    model's feature spec (the online pointer), or the one the model was trained on when
    asked (`snapshot: "training"`) or when none is published yet. Categories are coded
    with the model's vocabularies: a newer snapshot may know other texts, in another
    order, than the model was trained on."""
    from gallop.features.online import CardBeforeSnapshot, CardError, card_features
    from gallop.features.pointer import PointerUnreadable, iso_time
    from gallop.layout import features_prefix
    from gallop.storage import ObjectMissing

    manifest = model.manifest
    dataset, spec_hash = manifest["dataset"], manifest["feature_spec_hash"]
    pointer = None
    if snapshot == ONLINE and dataset and spec_hash:
        try:
            pointer = pointer_cache(state).get(dataset, spec_hash)
        except PointerUnreadable as exc:
            raise InputError(f'{exc}; or send "snapshot": "training"', 409) from None
    if pointer is not None:
        key, version_id, used = pointer.state_key, pointer.version_id, ONLINE
    else:
        version_id, used = manifest["data_version"], TRAINING
        key = features_prefix(dataset, version_id, spec_hash) + SNAPSHOT_FILE
    try:
        entities = state.snapshots(key)
    except ObjectMissing:
        raise InputError(
            f"the {used} entity snapshot (version {version_id}) is gone: "
            + ("build the features again" if used == ONLINE else "send full feature rows"),
            409,
        ) from None
    card = [dict(zip(columns, row, strict=True)) for row in values]
    try:
        names, matrix = card_features(card, entities, spec_hash, manifest.get("categorical"))
    except CardBeforeSnapshot as exc:
        raise InputError(f"race card: {exc} ({used} snapshot, version {version_id})", 409) from None
    except CardError as exc:
        problems = [p.to_dict() for p in exc.problems]
        raise InputError(f"race card: {exc}", problems=problems) from None
    at = [names.index(f) for f in model.features]
    features = np.ascontiguousarray(matrix[:, at])
    beyond = np.argwhere(np.isinf(features))
    if len(beyond):  # as feature rows are checked: the model never sees an infinity
        row, column = beyond[0]
        raise InputError(f"card row {row + 1}: {model.features[column]} is not finite")
    groups = group_ids([row.get(model.group) for row in card]) if model.group else None
    data_end = entities.meta.get("data_end")
    as_of = {"version_id": version_id, "data_end": iso_time(data_end), "snapshot": used}
    return features, groups, as_of


async def _route(request: Request, explain: bool) -> Response:
    key = request.headers.get("x-api-key")
    event = request.scope.get("aws.event")
    correlation = request.headers.get(CORRELATION_HEADER)
    raw = await request.body()
    status, payload = answer(request.app.state, key, event, raw, explain, correlation)
    return Response(payload, status_code=status, headers=reply_headers(status))


@router.post(
    "/v1/predict",
    openapi_extra=_schema(PredictBody),
    responses=_responses(PredictReply),
)
async def predict(request: Request) -> Response:
    """Score, and per task: win and place probability and rank (ranking), probability
    (binary), value with its interval (regression); one prediction per row, in order."""
    return await _route(request, explain=False)


@router.post(
    "/v1/explain",
    openapi_extra=_schema(ExplainBody),
    responses=_responses(ExplainReply),
)
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
    from gallop.api import openapi

    # The routes check the API key themselves.
    app = FastAPI(title="gallop predict", generate_unique_id_function=lambda r: r.name)
    app.state.settings = settings
    app.state.store = cache(lambda: Store.from_settings(settings))
    app.state.artifacts = cache(lambda: Store.artifacts_from_settings(settings))

    app.state.snapshots = cached_snapshots(lambda key: app.state.store().get_bytes(key))
    app.include_router(router)
    problems.install(app)
    openapi.install(app)
    app.add_middleware(BodyLimit, settings=settings)
    return app
