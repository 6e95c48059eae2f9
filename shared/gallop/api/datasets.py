"""Routes for datasets, their uploads and versions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import Engine

from gallop.api.schemas import (
    CardFeatures,
    CardRequest,
    DatasetOut,
    FeatureSetOut,
    UploadOut,
    UploadRequest,
    UploadStatus,
    VersionOut,
    VersionSummary,
)
from gallop.ingest.formats import FILENAMES
from gallop.metadata import repo
from gallop.metadata.models import Dataset, DatasetVersion
from gallop.spec import DatasetSpec
from gallop.storage import RawKey

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
    responses={200: {"description": "Already registered with this spec"}, 409: {}},
)
def register_dataset(spec: DatasetSpec, request: Request, response: Response) -> DatasetOut:
    """Register a dataset and its spec. Registering the same spec again is a no-op."""
    try:
        dataset, created = repo.register_dataset(request.app.state.engine(), spec)
    except repo.DatasetConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    return _dataset_out(dataset)


@router.get("", response_model=list[DatasetOut])
def list_datasets(request: Request) -> list[DatasetOut]:
    return [_dataset_out(d) for d in repo.list_datasets(request.app.state.engine())]


@router.get("/{name}", response_model=DatasetOut)
def get_dataset(name: str, request: Request) -> DatasetOut:
    return _dataset_out(_dataset(request, name))


@router.post("/{name}/uploads", response_model=UploadOut, status_code=status.HTTP_201_CREATED)
def create_upload(name: str, request: Request, body: UploadRequest | None = None) -> UploadOut:
    """A presigned POST for one file. The key is chosen here, never by the client."""
    body = body or UploadRequest()
    dataset = _dataset(request, name)
    settings = request.app.state.settings
    upload_id = uuid.uuid4().hex
    key = RawKey.for_upload(dataset.name, upload_id, FILENAMES[body.format]).key
    post = request.app.state.store().presigned_post(
        key, settings.max_upload_bytes, settings.upload_url_expiry_seconds
    )
    repo.create_upload(request.app.state.engine(), dataset, upload_id, key, body.format)
    return UploadOut(
        upload_id=upload_id,
        key=key,
        url=post["url"],
        fields=post["fields"],
        max_bytes=settings.max_upload_bytes,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.upload_url_expiry_seconds),
    )


@router.get("/{name}/uploads/{upload_id}", response_model=UploadStatus)
def get_upload(name: str, upload_id: str, request: Request) -> UploadStatus:
    dataset = _dataset(request, name)
    try:
        upload = repo.get_upload(request.app.state.engine(), dataset, upload_id)
    except repo.UploadNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no upload {upload_id!r} for dataset {name!r}"
        ) from None
    return UploadStatus.model_validate(upload, from_attributes=True)


def _summary(version: DatasetVersion) -> dict:
    return dict(
        version_id=version.version_id,
        status=version.status,
        row_count=version.row_count,
        group_count=version.group_count,
        content_hash=version.content_hash,
        created_at=version.created_at,
        errors=len(version.report.get("errors", [])),
        warnings=len(version.report.get("warnings", [])),
    )


@router.get("/{name}/versions", response_model=list[VersionSummary])
def list_versions(name: str, request: Request) -> list[VersionSummary]:
    dataset = _dataset(request, name)
    versions = repo.list_versions(request.app.state.engine(), dataset)
    return [VersionSummary(**_summary(v)) for v in versions]


@router.get("/{name}/versions/{version_id}", response_model=VersionOut)
def get_version(name: str, version_id: str, request: Request) -> VersionOut:
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


@router.get("/{name}/versions/{version_id}/features", response_model=list[FeatureSetOut])
def list_feature_sets(name: str, version_id: str, request: Request) -> list[FeatureSetOut]:
    """Features computed for the version (READY), or why they could not be (FAILED)."""
    dataset = _dataset(request, name)
    engine = request.app.state.engine()
    if repo.find_version(engine, dataset, version_id) is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no version {version_id!r} of dataset {name!r}"
        )
    return [
        FeatureSetOut.model_validate(f, from_attributes=True)
        for f in repo.list_feature_sets(engine, dataset, version_id)
    ]


@router.post("/{name}/versions/{version_id}/features/card", response_model=CardFeatures)
def card_feature_rows(
    name: str, version_id: str, body: CardRequest, request: Request
) -> CardFeatures:
    """The feature rows of a race card, from the version's entity snapshot: the rows the
    offline path would have produced had the race been in the data."""
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
        raise HTTPException(422, str(exc)) from None
    rows = [[None if math.isnan(v) else float(v) for v in row] for row in matrix.tolist()]
    return CardFeatures(spec_hash=ready[-1].spec_hash, features=names, rows=rows)
