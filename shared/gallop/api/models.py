"""The registered models, and promoting one to champion or challenger."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from gallop.serving.registry import ModelNotFound
from gallop.serving.registry import aliases as current_aliases
from gallop.serving.registry import get_model as registered_model
from gallop.serving.registry import list_models as registered_models
from gallop.serving.registry import promote as promote_alias

router = APIRouter(tags=["models"])


class PromoteBody(BaseModel):
    alias: Literal["champion", "challenger"]


def _model_out(
    request: Request, model: Any, names: dict[str, list[str]], full: bool
) -> dict[str, Any]:
    out = {
        "model_id": model.model_id,
        "run_id": model.run_id,
        "dataset": model.manifest.get("dataset"),
        "task": model.task,
        "created_at": model.created_at.isoformat(),
        "aliases": names.get(model.model_id, []),
        "metrics": (model.manifest.get("metrics") or {}).get("stack"),
    }
    if full:
        state = request.app.state
        out["features"] = model.manifest["features"]
        out["base_models"] = model.manifest["base_models"]
        out["report_url"] = state.artifacts().presigned_get(
            model.report_key, state.settings.report_url_expiry_seconds
        )
    return out


def _alias_names(request: Request) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for alias, model_id in sorted(current_aliases(request.app.state.engine()).items()):
        names.setdefault(model_id, []).append(alias)
    return names


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    names = _alias_names(request)
    models = registered_models(request.app.state.engine())
    return {"models": [_model_out(request, m, names, full=False) for m in models]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, request: Request) -> dict[str, Any]:
    try:
        model = registered_model(request.app.state.engine(), model_id)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _model_out(request, model, _alias_names(request), full=True)


@router.post("/v1/models/{model_id}/promote")
def promote(model_id: str, body: PromoteBody, request: Request) -> dict[str, Any]:
    """Point champion or challenger at this model, in one step: requests see the old
    model or the new one (every container within the alias TTL)."""
    try:
        state = request.app.state
        previous = promote_alias(state.engine(), state.artifacts(), model_id, body.alias)
        if hasattr(state, "models"):  # this process serves predictions too (gallop serve)
            state.models.forget(body.alias)  # other containers: within the alias TTL
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return {"alias": body.alias, "model_id": model_id, "previous": previous}
