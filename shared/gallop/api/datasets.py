"""Routes for datasets, their uploads and versions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from sqlalchemy import Engine

from gallop.api.pages import Cursor, Limit, Page, fetched
from gallop.api.problems import problem_response
from gallop.api.schemas import (
    CardFeatures,
    CardRequest,
    DatasetName,
    DatasetOut,
    FeatureSetOut,
    UploadId,
    UploadMode,
    UploadOut,
    UploadRequest,
    UploadStatus,
    VersionId,
    VersionOut,
    VersionSummary,
)
from gallop.ingest import unclaimed
from gallop.ingest.formats import FILENAMES
from gallop.layout import APPEND, REPLACE, NotAnUploadKey, RawKey
from gallop.metadata import repo
from gallop.metadata.models import Dataset, DatasetVersion, Upload
from gallop.spec import DatasetSpec

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _dataset(request: Request, name: str) -> Dataset:
    return dataset_or_404(request.app.state.engine(), name)


def dataset_or_404(engine: Engine, name: str) -> Dataset:
    try:
        return repo.get_dataset(engine, name)
    except repo.DatasetNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dataset named {name!r}") from None


def _dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(
        name=dataset.name,
        spec=repo.spec_of(dataset),
        spec_hash=dataset.spec_hash,
        created_at=dataset.created_at,
    )


@router.post(
    "",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": DatasetOut, "description": "Already registered with this spec"},
        409: {"description": "The name is taken by a dataset with another spec"},
    },
)
def register_dataset(spec: DatasetSpec, request: Request, response: Response) -> DatasetOut:
    """Register a dataset and its spec. Registering the same spec again is a no-op. Files
    copied to raw/{name}/ before it existed (unclaimed uploads) are ingested now."""
    engine = request.app.state.engine()
    try:
        dataset, created = repo.register_dataset(engine, spec)
    except repo.DatasetConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if repo.list_unclaimed(engine, dataset.name):  # most registrations: no S3 call at all
        unclaimed.claim(request.app.state.store(), engine, dataset.name)
    if created:
        response.headers["location"] = _path(request, "get_dataset", name=dataset.name)
    else:
        response.status_code = status.HTTP_200_OK
    return _dataset_out(dataset)


def _path(request: Request, route: str, **params: str) -> str:
    """A resource's path from the host's root (API Gateway's stage first, if any)."""
    return request.url_for(route, **params).path


@router.get("", response_model=Page[DatasetOut])
def list_datasets(request: Request, limit: Limit = 100, cursor: Cursor = None) -> Page[DatasetOut]:
    """The datasets, by name."""
    engine = request.app.state.engine()
    found, after = fetched(lambda: repo.page_datasets(engine, limit, cursor))
    return Page(items=[_dataset_out(d) for d in found], next_cursor=after)


@router.get("/{name}", response_model=DatasetOut, responses={404: {}})
def get_dataset(name: DatasetName, request: Request) -> DatasetOut:
    return _dataset_out(_dataset(request, name))


UPLOAD_EXAMPLES: dict[str, Any] = {
    "replace": {
        "summary": "A whole dataset",
        "description": "The file is every row: a version of its own.",
        "value": {"format": "csv"},
    },
    "append": {
        "summary": "An append",
        "description": "Today's results: the newest VALID version plus these rows.",
        "value": {"format": "csv", "mode": APPEND},
    },
    "corrections": {
        "summary": "An append with corrections",
        "description": "Races sent again replace the stored races' rows.",
        "value": {"format": "csv", "mode": APPEND, "corrections": True},
    },
}


@router.post(
    "/{name}/uploads",
    response_model=UploadOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        404: {},
        422: {"description": "A bad body, e.g. corrections without mode append"},
    },
)
def create_upload(
    name: DatasetName,
    request: Request,
    response: Response,
    body: Annotated[UploadRequest | None, Body(openapi_examples=UPLOAD_EXAMPLES)] = None,
) -> UploadOut:
    """A presigned POST for one file. The key is chosen here, never by the client; its
    folder says the mode: an append lands under raw/{name}/append/ (with corrections,
    raw/{name}/corrections/), as a file copied there with `aws s3 cp` does."""
    body = body or UploadRequest()
    dataset = _dataset(request, name)
    settings = request.app.state.settings
    upload_id = uuid.uuid4().hex
    raw = RawKey.for_upload(
        dataset.name, upload_id, FILENAMES[body.format], body.mode, body.corrections
    )
    key = raw.key
    post = request.app.state.store().presigned_post(
        key, settings.max_upload_bytes, settings.upload_url_expiry_seconds
    )
    repo.create_upload(request.app.state.engine(), dataset, upload_id, key, body.format)
    response.headers["location"] = _path(
        request, "get_upload", name=dataset.name, upload_id=upload_id
    )
    return UploadOut(
        upload_id=upload_id,
        key=key,
        mode=cast(UploadMode, raw.mode),
        corrections=raw.corrections,
        url=post["url"],
        fields=post["fields"],
        max_bytes=settings.max_upload_bytes,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.upload_url_expiry_seconds),
    )


@router.get("/{name}/uploads", response_model=Page[UploadStatus], responses={404: {}})
def list_uploads(
    name: DatasetName,
    request: Request,
    prefix: Annotated[str, Query(max_length=1024)] = "",
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[UploadStatus]:
    """Every file that landed under raw/{name}/ (through the API or copied there), oldest
    first; `prefix` narrows them to keys that start with it (e.g. raw/{name}/2024/)."""
    dataset = _dataset(request, name)
    engine = request.app.state.engine()
    found, after = fetched(lambda: repo.page_uploads(engine, dataset, prefix, limit, cursor))
    return Page(items=[_upload_status(u) for u in found], next_cursor=after)


@router.get("/{name}/uploads/{upload_id}", response_model=UploadStatus, responses={404: {}})
def get_upload(name: DatasetName, upload_id: UploadId, request: Request) -> UploadStatus:
    dataset = _dataset(request, name)
    try:
        upload = repo.get_upload(request.app.state.engine(), dataset, upload_id)
    except repo.UploadNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no upload {upload_id!r} for dataset {name!r}"
        ) from None
    return _upload_status(upload)


def _upload_status(upload: Upload) -> UploadStatus:
    """An upload as the API shows it: its mode is its key's, as ingestion reads it."""
    try:
        raw = RawKey.parse(upload.key)
        mode, corrections = raw.mode, raw.corrections
    except NotAnUploadKey:  # never stored for a dataset; shown as what ingestion would do
        mode, corrections = REPLACE, False
    return UploadStatus.model_validate(  # validated: a status is one of three, as stored
        dict(
            upload_id=upload.upload_id,
            key=upload.key,
            mode=mode,
            corrections=corrections,
            etag=upload.etag,
            status=upload.status,
            version_id=upload.version_id,
            report_key=upload.report_key,
            report=upload.report,
            created_at=upload.created_at,
            processed_at=upload.processed_at,
        )
    )


def _summary(version: DatasetVersion) -> dict:
    return dict(
        version_id=version.version_id,
        status=version.status,
        row_count=version.row_count,
        group_count=version.group_count,
        content_hash=version.content_hash,
        created_at=version.created_at,
        # A report lists so many problems and counts the rest.
        errors=len(version.report.get("errors", [])) + version.report.get("errors_left_out", 0),
        warnings=len(version.report.get("warnings", []))
        + version.report.get("warnings_left_out", 0),
        parent_version_id=version.parent_version_id,
        rows_added=version.rows_added,
        rows_replaced=version.rows_replaced,
    )


@router.get("/{name}/versions", response_model=Page[VersionSummary], responses={404: {}})
def list_versions(
    name: DatasetName, request: Request, limit: Limit = 100, cursor: Cursor = None
) -> Page[VersionSummary]:
    """The dataset's versions, oldest first."""
    dataset = _dataset(request, name)
    engine = request.app.state.engine()
    found, after = fetched(lambda: repo.page_versions(engine, dataset, limit, cursor))
    return Page(items=[VersionSummary(**_summary(v)) for v in found], next_cursor=after)


@router.get("/{name}/versions/{version_id}", response_model=VersionOut, responses={404: {}})
def get_version(name: DatasetName, version_id: VersionId, request: Request) -> VersionOut:
    dataset = _dataset(request, name)
    version = repo.find_version(request.app.state.engine(), dataset, version_id)
    if version is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no version {version_id!r} of dataset {name!r}"
        )
    return VersionOut(
        **_summary(version),
        source_key=version.source_key,
        data_key=version.data_key,
        report_key=version.report_key,
        report=version.report,
    )


@router.get(
    "/{name}/versions/{version_id}/features",
    response_model=Page[FeatureSetOut],
    responses={404: {}},
)
def list_feature_sets(
    name: DatasetName,
    version_id: VersionId,
    request: Request,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[FeatureSetOut]:
    """Features computed for the version (READY), or why they could not be (FAILED)."""
    dataset = _dataset(request, name)
    engine = request.app.state.engine()
    if repo.find_version(engine, dataset, version_id) is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no version {version_id!r} of dataset {name!r}"
        )
    found, after = fetched(
        lambda: repo.page_feature_sets(engine, dataset, version_id, limit, cursor)
    )
    items = [FeatureSetOut.model_validate(f, from_attributes=True) for f in found]
    return Page(items=items, next_cursor=after)


@router.post(
    "/{name}/versions/{version_id}/features/card",
    response_model=CardFeatures,
    responses={
        404: {"description": "No such dataset, or no READY features for the version"},
        413: {},
        422: {"description": "The card breaks ingestion's rules: `problems` lists them"},
    },
)
def card_feature_rows(
    name: DatasetName, version_id: VersionId, body: CardRequest, request: Request
) -> CardFeatures | Response:
    """The feature rows of a race card, from the version's entity snapshot: the rows the
    offline path would have produced had the race been in the data. A card that breaks
    ingestion's rules is a 422 listing its problems, as /v1/predict answers it."""
    import math

    from gallop.features.online import CardError, card_features

    dataset = _dataset(request, name)
    engine = request.app.state.engine()
    ready = [f for f in repo.list_feature_sets(engine, dataset, version_id) if f.status == "READY"]
    if not ready or ready[-1].state_key is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no READY features for version {version_id!r} of {name!r}"
        )
    state = request.app.state.snapshots(ready[-1].state_key)
    try:
        names, matrix = card_features(body.rows, state, ready[-1].spec_hash)
    except CardError as exc:
        listed: dict[str, Any] = {}
        if exc.problems:
            listed["problems"] = [p.to_dict() for p in exc.problems]
        return problem_response(422, str(exc), **listed)
    rows = [[None if math.isnan(v) else float(v) for v in row] for row in matrix.tolist()]
    return CardFeatures(spec_hash=ready[-1].spec_hash, features=names, rows=rows)
