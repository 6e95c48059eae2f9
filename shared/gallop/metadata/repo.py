"""Data access for datasets, their versions and uploads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from gallop.metadata.db import session_scope
from gallop.metadata.models import (
    Dataset,
    DatasetVersion,
    FeatureSet,
    Upload,
    VersionStatus,
    utcnow,
)
from gallop.spec import DatasetSpec


class DatasetNotFound(LookupError):
    pass


class DatasetConflict(ValueError):
    """The name is taken by a dataset with another spec."""


class UploadNotFound(LookupError):
    pass


def register_dataset(engine: Engine, spec: DatasetSpec) -> tuple[Dataset, bool]:
    """Create the dataset, or return the existing one if its spec is the same.

    Returns (dataset, created).
    """
    try:
        with session_scope(engine) as session:
            existing = session.scalar(select(Dataset).where(Dataset.name == spec.name))
            if existing is None:
                dataset = Dataset(
                    name=spec.name, spec=spec.model_dump(mode="json"), spec_hash=spec.spec_hash
                )
                session.add(dataset)
                created = True
            else:
                dataset, created = existing, False
    except IntegrityError:
        # A concurrent request registered the same name between our read and write.
        dataset, created = get_dataset(engine, spec.name), False
    if dataset.spec_hash != spec.spec_hash:
        raise DatasetConflict(
            f"dataset {spec.name!r} already exists with another spec; "
            "register the new spec under a new name"
        )
    return dataset, created


def get_dataset(engine: Engine, name: str) -> Dataset:
    with session_scope(engine) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            raise DatasetNotFound(name)
        return dataset


def list_datasets(engine: Engine) -> list[Dataset]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def spec_of(dataset: Dataset) -> DatasetSpec:
    return DatasetSpec.model_validate(dataset.spec)


def create_upload(
    engine: Engine, dataset: Dataset, upload_id: str, key: str, file_format: str
) -> Upload:
    with session_scope(engine) as session:
        upload = Upload(
            upload_id=upload_id,
            dataset_id=dataset.id,
            key=key,
            file_format=file_format,
            status=VersionStatus.PENDING.value,
        )
        session.add(upload)
    return upload


def get_upload(engine: Engine, dataset: Dataset, upload_id: str) -> Upload:
    with session_scope(engine) as session:
        upload = session.get(Upload, upload_id)
        if upload is None or upload.dataset_id != dataset.id:
            raise UploadNotFound(upload_id)
        return upload


def list_versions(engine: Engine, dataset: Dataset) -> list[DatasetVersion]:
    with session_scope(engine) as session:
        query = (
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.created_at, DatasetVersion.id)
        )
        return list(session.scalars(query))


def find_version(engine: Engine, dataset: Dataset, version_id: str) -> DatasetVersion | None:
    with session_scope(engine) as session:
        return session.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.version_id == version_id
            )
        )


def record_version(
    engine: Engine, dataset: Dataset, upload_id: str, etag: str, **fields: Any
) -> tuple[DatasetVersion, bool]:
    """Store a version and settle its upload in one transaction: the step that makes a
    version visible. A version that already exists is kept as it is (same content hash,
    same version), so a repeated upload or event adds nothing. Returns (version, created).
    """
    version_id = fields["version_id"]
    try:
        with session_scope(engine) as session:
            version = session.scalar(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == dataset.id,
                    DatasetVersion.version_id == version_id,
                )
            )
            created = version is None
            if version is None:
                version = DatasetVersion(dataset_id=dataset.id, **fields)
                session.add(version)
            _settle_upload(session, upload_id, version.status, version_id, etag)
        return version, created
    except IntegrityError:
        # Another worker stored the same version between our read and write.
        existing = find_version(engine, dataset, version_id)
        if existing is None:
            raise
        with session_scope(engine) as session:
            _settle_upload(session, upload_id, existing.status, version_id, etag)
        return existing, False


def _settle_upload(session: Any, upload_id: str, status: str, version_id: str, etag: str) -> None:
    upload = session.get(Upload, upload_id)
    if upload is not None:
        upload.status = status
        upload.version_id = version_id
        upload.etag = etag
        upload.processed_at = utcnow()


def find_feature_set(
    engine: Engine, dataset: Dataset, version_id: str, spec_hash: str
) -> FeatureSet | None:
    with session_scope(engine) as session:
        return session.scalar(
            select(FeatureSet).where(
                FeatureSet.dataset_id == dataset.id,
                FeatureSet.version_id == version_id,
                FeatureSet.spec_hash == spec_hash,
            )
        )


def list_feature_sets(engine: Engine, dataset: Dataset, version_id: str) -> list[FeatureSet]:
    with session_scope(engine) as session:
        query = select(FeatureSet).where(
            FeatureSet.dataset_id == dataset.id, FeatureSet.version_id == version_id
        )
        return list(session.scalars(query.order_by(FeatureSet.created_at, FeatureSet.id)))


def record_feature_set(engine: Engine, dataset: Dataset, **fields: Any) -> FeatureSet:
    """Store the outcome; the first outcome for (version, spec) stands (idempotent)."""
    try:
        with session_scope(engine) as session:
            feature_set = FeatureSet(dataset_id=dataset.id, **fields)
            session.add(feature_set)
        return feature_set
    except IntegrityError:
        existing = find_feature_set(engine, dataset, fields["version_id"], fields["spec_hash"])
        if existing is None:
            raise
        return existing
