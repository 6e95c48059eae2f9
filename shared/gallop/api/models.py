"""The registered models, and promoting one to champion or challenger."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from gallop.api.auth import actor_of, require_role
from gallop.api.datasets import dataset_or_404
from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.schemas import ModelId
from gallop.metadata.models import RegisteredModel
from gallop.serving.registry import ModelNotFound, ModelUnreadable, alias_names
from gallop.serving.registry import get_model as registered_model
from gallop.serving.registry import page_models as registered_models
from gallop.serving.registry import promote as promote_alias
from gallop.spec import NAME_PATTERN

router = APIRouter(tags=["models"])


class PromoteBody(BaseModel):
    alias: Literal["champion", "challenger"]
    reason: str | None = Field(
        default=None, max_length=1000, description="Why, for the alias history."
    )
    dataset: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The dataset whose alias moves, checked: a model of another dataset "
        "is refused (422). Default: the model's own.",
    )


class ModelSummary(BaseModel):
    model_id: str
    run_id: str
    dataset: str | None
    task: str
    created_at: datetime
    aliases: list[str] = Field(description="champion, challenger: its dataset's aliases naming it.")
    metrics: dict[str, Any] | None = Field(description="The stack's held-out metrics.")


class ModelDetail(ModelSummary):
    features: list[str]
    base_models: Sequence[Mapping[str, Any]] = Field(description="The stacked base models.")
    report_url: str = Field(description="A presigned link to the run's HTML report.")
    artifact_url: str = Field(
        description="A presigned link to the model folder (model.tar.gz), for gallop.load_model."
    )
    leaderboard: Mapping[str, Any] | None = Field(
        description="The held-out metrics of the stack and of each base, by name."
    )
    evaluated_on: str | None = Field(
        default=None, description="test (held-out rows) or out-of-fold: what the figures rest on."
    )
    against_best_base: Mapping[str, Any] | None = Field(
        default=None,
        description="The stack against its best base on each metric of the judged rows: the "
        "stack's advantage (positive: the stack is better), its paired 95 % bootstrap "
        "interval, and the verdict (not below unless the interval lies wholly below zero). "
        "Null for a model trained before it was reported.",
    )


class Promoted(BaseModel):
    alias: Literal["champion", "challenger"]
    dataset: str | None = Field(description="The dataset whose alias it is: the model's.")
    model_id: str
    previous: str | None = Field(description="The model the alias named before, if any.")


def _model_out(
    request: Request, model: RegisteredModel, names: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "model_id": model.model_id,
        "run_id": model.run_id,
        "dataset": model.manifest.get("dataset"),
        "task": model.task,
        "created_at": model.created_at,
        "aliases": names.get(model.model_id, []),
        "metrics": (model.manifest.get("metrics") or {}).get("stack"),
    }


def _alias_names(request: Request) -> dict[str, list[str]]:
    return alias_names(request.app.state.engine())


def _check_dataset(model: RegisteredModel, dataset: str) -> None:
    own = model.manifest.get("dataset")
    if own != dataset:
        raise HTTPException(
            422,
            f"model {model.model_id} is dataset {own!r}'s: it cannot be {dataset!r}'s alias "
            "(an alias names a model of its own dataset); nothing changed",
        )


def serving_changed(state: Any, dataset: str | None) -> None:
    """The dataset's serving object changed in this process: when it serves predictions too
    (gallop serve), it reads the object again at once; other containers within the alias
    TTL."""
    if hasattr(state, "models") and dataset:
        state.models.forget(dataset)


@router.get("/v1/models", response_model=Page[ModelSummary], responses={404: {}})
def list_models(
    request: Request,
    dataset: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ModelSummary]:
    """The registered models (of one dataset: 404 if there is none of that name), newest
    first."""
    engine = request.app.state.engine()
    dataset_id = dataset_or_404(engine, dataset).id if dataset else None
    names = _alias_names(request)
    found, after = fetched(lambda: registered_models(engine, limit, cursor, dataset_id))
    items = [ModelSummary(**_model_out(request, m, names)) for m in found]
    return Page(items=items, next_cursor=after)


@router.get("/v1/models/{model_id}", response_model=ModelDetail, responses={404: {}})
def get_model(model_id: ModelId, request: Request) -> ModelDetail:
    state = request.app.state
    try:
        model = registered_model(state.engine(), model_id)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    expiry = state.settings.report_url_expiry_seconds
    return ModelDetail(
        **_model_out(request, model, _alias_names(request)),
        features=model.manifest["features"],
        base_models=model.manifest["base_models"],
        report_url=state.artifacts().presigned_get(model.report_key, expiry),
        artifact_url=state.artifacts().presigned_get(model.artifact_key, expiry),
        leaderboard=model.manifest.get("metrics"),
        evaluated_on=model.manifest.get("evaluated_on"),
        against_best_base=model.manifest.get("against_best_base"),
    )


@router.post(
    "/v1/models/{model_id}/promote",
    response_model=Promoted,
    responses={
        404: {},
        409: {"description": "The model's files are gone: train it again"},
        422: {"description": "The model is another dataset's"},
    },
)
def promote(model_id: ModelId, body: PromoteBody, request: Request) -> Promoted:
    """Point the model's dataset's champion or challenger at this model, in one step:
    requests see the old model or the new one (every container within the alias TTL).
    The move is a line of the dataset's alias history.

    Role: approver for champion, writer for challenger."""
    require_role(request, "approver" if body.alias == "champion" else "writer")
    state = request.app.state
    try:
        model = registered_model(state.engine(), model_id)
        if body.dataset is not None:
            _check_dataset(model, body.dataset)
        previous = promote_alias(
            state.engine(),
            state.artifacts(),
            model_id,
            body.alias,
            actor=actor_of(request),
            reason=body.reason,
        )
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ModelUnreadable as exc:
        raise HTTPException(409, str(exc)) from None
    dataset = model.manifest.get("dataset")
    serving_changed(state, dataset)
    return Promoted(alias=body.alias, dataset=dataset, model_id=model_id, previous=previous)
