"""The FastAPI application behind API Gateway (through Mangum) and `gallop serve`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from fastapi import Depends, FastAPI, Request
from sqlalchemy import Engine, text

from gallop import __version__
from gallop.api import (
    aliases,
    datasets,
    models,
    monitoring,
    openapi,
    problems,
    renewal,
    training,
    uploads,
)
from gallop.api.auth import require_api_key
from gallop.api.gateway import GatewayRootPath
from gallop.api.limits import BodyLimit
from gallop.api.schemas import Health
from gallop.echo import clip
from gallop.features.state import cached_snapshots
from gallop.metadata.db import engine_for
from gallop.observability import logger as make_logger
from gallop.observability import metrics as make_metrics
from gallop.settings import Settings, get_settings
from gallop.storage import Store
from gallop.training.launchers import launcher_for

log = make_logger("gallop-api")
meter = make_metrics("gallop-api")  # flushed by the Lambda handler after each invocation


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    store: Store | None = None,
    artifacts: Store | None = None,
    serve_predictions: bool = True,
) -> FastAPI:
    """Build the app. Engine, stores and the training launcher are created on first use,
    not at import. With serve_predictions, /v1/predict and /v1/explain too (gallop
    serve); deployed, the predict function answers those."""
    settings = settings or get_settings()
    app = FastAPI(
        title="gallop",
        version=__version__,
        description="Upload tabular (race) data, validate it, train and serve models.",
        dependencies=[Depends(require_api_key)],
        lifespan=_stop_training_at_shutdown,
        # Operation ids are the route functions' names: list_datasets, cancel_training_run
        # (what a generated client names its functions), not FastAPI's name_path_method.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.engine = cache(lambda: engine or engine_for(settings.sqlalchemy_url))
    app.state.store = cache(lambda: store or Store.from_settings(settings))
    app.state.artifacts = cache(lambda: artifacts or Store.artifacts_from_settings(settings))
    app.state.launcher = cache(
        lambda: launcher_for(settings, app.state.engine(), app.state.store(), app.state.artifacts())
    )
    app.state.snapshots = cached_snapshots(lambda key: app.state.store().get_bytes(key))
    app.include_router(datasets.router)
    app.include_router(uploads.router)
    app.include_router(training.router)
    app.include_router(models.router)
    app.include_router(aliases.router)
    app.include_router(monitoring.router)
    app.include_router(renewal.router)
    if serve_predictions:  # the deployed api leaves them to the predict function
        from gallop.api import serving

        app.include_router(serving.router)

    @app.get("/v1/health", response_model=Health, tags=["health"])
    def health(request: Request) -> Health:
        with request.app.state.engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return Health(status="ok", database="ok", version=__version__)

    problems.install(app)
    openapi.install(app)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(GatewayRootPath)
    app.middleware("http")(_correlate)  # added last: outermost, so a 413 is logged too
    return app


@asynccontextmanager
async def _stop_training_at_shutdown(app: FastAPI) -> AsyncIterator[None]:
    """gallop serve stopping (SIGTERM, Ctrl-C) stops the runs it trains. On Lambda the
    lifespan is off, and runs train on SageMaker."""
    yield
    if app.state.launcher.cache_info().currsize:  # made: runs may train in this process
        app.state.launcher().close()


async def _correlate(request: Request, call_next: Callable) -> Any:
    """Log one structured line per request, keyed by a correlation id the caller sees."""
    aws_event = request.scope.get("aws.event") or {}
    correlation_id = clip(  # the caller's, said back in the reply and in every log line
        request.headers.get("x-correlation-id")
        or (aws_event.get("requestContext") or {}).get("requestId")
        or uuid.uuid4().hex
    )
    log.set_correlation_id(correlation_id)
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["x-correlation-id"] = correlation_id
    elapsed_ms = (time.perf_counter() - started) * 1000
    if aws_event:  # on Lambda only: the handler publishes them; uvicorn would never flush
        meter.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        if response.status_code >= 400:
            kind = "ServerErrors" if response.status_code >= 500 else "ClientErrors"
            meter.add_metric(name=kind, unit=MetricUnit.Count, value=1)
        meter.add_metric(
            name="DurationMilliseconds", unit=MetricUnit.Milliseconds, value=elapsed_ms
        )
    log.info(
        "request",
        extra={
            "method": request.method,
            "path": clip(request.url.path),
            "status": response.status_code,
            "duration_ms": round(elapsed_ms, 2),
        },
    )
    return response
