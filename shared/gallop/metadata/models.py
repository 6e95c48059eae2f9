"""Metadata tables. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from gallop.manifests import ModelManifest


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC on every database: SQLite keeps no zone, so it is put back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class VersionStatus(StrEnum):
    PENDING = "PENDING"
    VALID = "VALID"
    REJECTED = "REJECTED"


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    versions: Mapped[list[DatasetVersion]] = relationship(back_populates="dataset")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    group_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source_key: Mapped[str] = mapped_column(String(1024))
    data_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    report_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    # An append's lineage: the version it extends, its own rows, and the stored rows its
    # corrections replaced (None for a whole upload).
    parent_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rows_added: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rows_replaced: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The Parquet objects the whole data is, in order (gallop.ingest.canonical.read_canonical);
    # None on versions stored before appends: their data_key alone.
    parts: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class Upload(Base):
    """One object that landed under raw/ (its key and its bytes' ETag), and what it became.

    An upload through the API starts as a row naming its key with no ETag yet (the
    presigned form); the first bytes posted to that key claim it. Anything else (a copy
    by hand, new bytes under a key already seen) is a new row with an id of its own.
    """

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("key", "etag"),)

    upload_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    key: Mapped[str] = mapped_column(String(1024))
    file_format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.PENDING.value)
    version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # This upload's own report (a version made by several uploads keeps the first's).
    report_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Local stack: times it was re-sent at a start, unsettled. An upload that ends the
    # process while it is ingested (as a file past every limit could) would otherwise
    # end it again at every start.
    redriven: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class UnclaimedUpload(Base):
    """An object under raw/ that no dataset claims, kept under unclaimed/ until one does."""

    __tablename__ = "unclaimed_uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024))  # where it landed, under raw/
    unclaimed_key: Mapped[str] = mapped_column(String(1024))
    # The dataset its key names, not registered yet; None when the key names none.
    dataset: Mapped[str | None] = mapped_column(String(63), nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FeatureStatus(StrEnum):
    READY = "READY"
    FAILED = "FAILED"


class FeatureSet(Base):
    """Features of one dataset version under one feature spec (READY), or why not (FAILED)."""

    __tablename__ = "feature_sets"
    __table_args__ = (UniqueConstraint("dataset_id", "version_id", "spec_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version_id: Mapped[str] = mapped_column(String(64))
    spec_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    manifest_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    state_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    row_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    features: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # {"kind": "incremental" | "full", "parent_version_id", "reason"}: extended from the
    # parent's snapshot, or built whole and why (None on sets built before appends).
    build: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TrainingRun(Base):
    """One training run, identified by what it is made of (config, data, features, code)."""

    __tablename__ = "training_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version_id: Mapped[str] = mapped_column(String(64))
    spec_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    # Restarting a FAILED run is a new attempt: SageMaker job and execution names are unique.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    stage: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    execution: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RegisteredModel(Base):
    """The model a SUCCEEDED run produced: its artifacts under models/{run_id}/."""

    __tablename__ = "models"

    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.run_id"), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    task: Mapped[str] = mapped_column(String(16))
    artifact_key: Mapped[str] = mapped_column(String(1024))
    onnx_key: Mapped[str] = mapped_column(String(1024))
    manifest_key: Mapped[str] = mapped_column(String(1024))
    report_key: Mapped[str] = mapped_column(String(1024))
    manifest: Mapped[ModelManifest] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelAlias(Base):
    """champion or challenger: the model a request naming the alias is answered by."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.model_id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


# -- monitoring (issue #13): written by the monitor run, read by the API and the page --------


class LiveQuality(Base):
    """One metric of one model on one UTC day of serving, from the captured rows whose
    results are known; a day is recomputed whole as results arrive."""

    __tablename__ = "live_quality"

    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: NaN
    groups: Mapped[int] = mapped_column(Integer)  # races (rows, ungrouped) the value rests on
    rows: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DriftCheck(Base):
    """One drift check of a model's captured rows against its training reference."""

    __tablename__ = "drift_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rows: Mapped[int] = mapped_column(BigInteger)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    flagged: Mapped[int] = mapped_column(Integer)  # features flagged (not the score's row)
    table: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # gallop.monitoring.drift rows


class CaptureFile(Base):
    """A capture object the monitor has read: its cursor (a key is read once)."""

    __tablename__ = "capture_files"

    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(63))
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
