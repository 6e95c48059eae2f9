"""Routes for training runs: start one on a dataset version's features, follow it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Engine

from gallop.api.datasets import dataset_or_404
from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.schemas import ModelOut, RunStatus, TrainingRunOut, TrainingRunRequest
from gallop.metadata import repo
from gallop.metadata.models import (
    Dataset,
    DatasetVersion,
    FeatureStatus,
    TrainingRun,
    VersionStatus,
)
from gallop.spec import NAME_PATTERN
from gallop.training import runs
from gallop.training.config import (
    BadRunConfig,
    CostBounds,
    SettingProblem,
    hyperparameter_problems,
    run_config,
)

router = APIRouter(prefix="/v1/training-runs", tags=["training"])

RUN_ID = Path(pattern=r"^[0-9a-f]{16,64}$", description="The run id (hex).")
# A 202's Retry-After: when it is worth asking about the run again (a run takes minutes).
POLL_AFTER_SECONDS = 2
RunStatusName = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


def _accepted(request: Request, response: Response, run_id: str) -> None:
    """What a 202 about a run carries: where to follow it, and when."""
    response.headers["location"] = request.url_for("get_training_run", run_id=run_id).path
    response.headers["retry-after"] = str(POLL_AFTER_SECONDS)


@router.post(
    "",
    response_model=TrainingRunOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {
            "model": TrainingRunOut,
            "description": "The same run exists (pending, running or succeeded)",
        },
        404: {"description": "No such dataset or version"},
        409: {"description": "The version is not VALID, or its features are not READY"},
    },
)
def start_training_run(
    body: TrainingRunRequest, request: Request, response: Response
) -> TrainingRunOut:
    """Train a stack on a dataset version's features. The run id is a hash of what the run
    is made of: asking again for the same run returns it (200) instead of training again;
    a FAILED run is started again (202)."""
    state = request.app.state
    hyperparameters = body.hyperparameters | (
        {"time_limit": body.time_limit} if body.time_limit else {}
    )
    bounds = CostBounds.of(state.settings)
    problems = hyperparameter_problems(hyperparameters, bounds)
    if problems:  # every one of them, before anything is looked up or queued
        raise RequestValidationError([_error(body, problem) for problem in problems])
    engine = state.engine()
    dataset = dataset_or_404(engine, body.dataset)
    version = _version(engine, dataset, body.version)
    _require_ready_features(engine, dataset, version.version_id)
    try:
        config = run_config(
            dataset.name,
            dataset.spec["task"],
            body.bases,
            hyperparameters,
            body.test_share,
            bounds,
        )
    except BadRunConfig as exc:
        raise HTTPException(422, str(exc)) from None
    run, started = runs.start_run_of(engine, state.settings, dataset, version.version_id, config)
    if started:
        run = state.launcher().launch(run)
        _accepted(request, response, run.run_id)
    else:
        response.status_code = status.HTTP_200_OK
    return _run_out(request, run)


@router.get("", response_model=Page[TrainingRunOut], responses={404: {}})
def list_training_runs(
    request: Request,
    dataset: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this dataset's runs.")
    ] = None,
    status: Annotated[RunStatusName | None, Query(description="Only runs in it.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[TrainingRunOut]:
    """The training runs, newest first (of one dataset: 404 if there is none of that name)."""
    engine = request.app.state.engine()
    dataset_id = dataset_or_404(engine, dataset).id if dataset else None
    found, after = fetched(
        lambda: runs.page_runs(engine, limit, cursor, dataset_id=dataset_id, status=status)
    )
    return Page(items=[_run_out(request, run) for run in found], next_cursor=after)


@router.get("/{run_id}", response_model=TrainingRunOut, responses={404: {}})
def get_training_run(request: Request, run_id: str = RUN_ID) -> TrainingRunOut:
    try:
        run = runs.get_run(request.app.state.engine(), run_id)
    except runs.RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no training run {run_id!r}") from None
    return _run_out(request, run)


@router.delete(
    "/{run_id}",
    response_model=TrainingRunOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {}, 409: {"description": "The run has already ended"}},
)
def cancel_training_run(
    request: Request, response: Response, run_id: str = RUN_ID
) -> TrainingRunOut:
    """Cancel a PENDING or RUNNING run: it is CANCELLED at once, and its jobs are stopped
    (locally its job processes; on AWS its Step Functions execution). The run's record
    stays; POST the run again to start it anew."""
    state = request.app.state
    try:
        run = runs.mark_cancelled(state.engine(), run_id)
    except runs.RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no training run {run_id!r}") from None
    except runs.RunEnded as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    state.launcher().stop(run)
    _accepted(request, response, run.run_id)
    return _run_out(request, run)


def _error(body: TrainingRunRequest, problem: SettingProblem) -> dict[str, Any]:
    """A hyperparameter's problem as a validation error: where, what was given, why."""
    given_apart = problem.name == "time_limit" and body.time_limit is not None
    where = ("body", "time_limit") if given_apart else ("body", "hyperparameters", problem.name)
    return {"loc": where, "msg": problem.reason, "type": "hyperparameter", "input": problem.value}


def _version(engine: Engine, dataset: Dataset, version_id: str | None) -> DatasetVersion:
    """The named version, or the newest VALID one."""
    if version_id is None:
        valid = [
            v for v in repo.list_versions(engine, dataset) if v.status == VersionStatus.VALID.value
        ]
        if not valid:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"dataset {dataset.name!r} has no VALID version yet"
            )
        return valid[-1]
    version = repo.find_version(engine, dataset, version_id)
    if version is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no version {version_id!r} of dataset {dataset.name!r}"
        )
    if version.status != VersionStatus.VALID.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"version {version_id!r} of {dataset.name!r} is {version.status}, not VALID",
        )
    return version


def _require_ready_features(engine: Engine, dataset: Dataset, version_id: str) -> None:
    found = repo.find_feature_set(engine, dataset, version_id, dataset.spec_hash)
    if found is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the features of version {version_id!r} are not computed yet; start the run "
            "when GET /v1/datasets/{name}/versions/{version_id}/features shows READY",
        )
    if found.status != FeatureStatus.READY.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the features of version {version_id!r} are {found.status}: {found.reason}",
        )


def _run_out(request: Request, run: TrainingRun) -> TrainingRunOut:
    state = request.app.state
    model = runs.find_model(state.engine(), run.run_id)
    report_url = None
    if model is not None:
        report_url = state.artifacts().presigned_get(
            model.report_key, state.settings.report_url_expiry_seconds
        )
    return TrainingRunOut(
        run_id=run.run_id,
        dataset=run.config["dataset"],
        version_id=run.version_id,
        spec_hash=run.spec_hash,
        code_version=run.code_version,
        config=run.config,
        status=cast(RunStatus, run.status),  # the column holds one of them
        attempt=run.attempt,
        stage=run.stage,
        reason=run.reason,
        metrics=run.metrics,
        execution=run.execution,
        model=ModelOut.model_validate(model, from_attributes=True) if model else None,
        report_url=report_url,
        # From the host's root, with API Gateway's stage before /v1 where there is one.
        links={"self": request.url_for("get_training_run", run_id=run.run_id).path},
        created_at=run.created_at,
        updated_at=run.updated_at,
    )
