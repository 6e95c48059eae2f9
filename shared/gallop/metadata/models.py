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
    """champion or challenger of one dataset: the model a request naming the alias (and the
    dataset) is answered by. Each dataset has its own."""

    __tablename__ = "model_aliases"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.model_id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


# -- renewal (issue #14): who moved an alias, and the policies that renew the champion ------


class AliasAction(StrEnum):
    PROMOTE = "promote"  # a person pointed the alias at a model (POST .../promote)
    APPROVE = "approve"  # an approved request promoted its challenger
    AUTO_PROMOTE = "auto_promote"  # the dataset promotes on a clear comparison by itself
    REJECT = "reject"  # an approval request was rejected: the alias did not move
    EXPIRE = "expire"  # an approval request timed out: the alias did not move
    ROLLBACK = "rollback"  # the champion went back one step
    RETRAIN = "retrain"  # a retraining policy's run made the challenger
    UNREGISTER = "unregister"  # the model lost its files: the alias names none now
    MIGRATE = "migrate"  # where the alias stood when aliases became per dataset (0011)


class AliasEvent(Base):
    """One line of a dataset's alias history, append-only (the database refuses UPDATE and
    DELETE on it): who (an API key's name, or the policy or migration), when, which alias,
    from which model to which, and why."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    from_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    approval_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TrafficMode(StrEnum):
    CHAMPION = "champion"  # the champion answers every request
    SHADOW = "shadow"  # ... and the challenger also scores a share of them, off the reply path
    SPLIT = "split"  # a share of races is answered by the challenger (stable hash of the race)


class TrafficPolicy(Base):
    """How a dataset's requests for its champion are shared with its challenger."""

    __tablename__ = "traffic_policies"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    # split: the share of races the challenger answers (champion: 1 - it)
    challenger_share: Mapped[float] = mapped_column(Float, default=0.0)
    # shadow and split: the share of races the model that did not answer also scores
    shadow_share: Mapped[float] = mapped_column(Float, default=0.0)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RetrainingPolicy(Base):
    """When a dataset is retrained (any of the triggers that are set), and what the policy
    last did. A retrain makes the challenger, never the champion."""

    __tablename__ = "retraining_policies"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    every_hours: Mapped[float | None] = mapped_column(Float, nullable=True)  # schedule
    after_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # appended rows
    on_alarm: Mapped[bool] = mapped_column(default=False)  # the champion's drift/quality alarm
    time_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)  # seconds, per run
    auto_promote: Mapped[bool] = mapped_column(default=False)  # on a clear comparison
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # What the policy last did: each trigger fires once (a failed run waits for the next).
    last_trigger: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    alarm_seen: Mapped[bool] = mapped_column(default=False)  # fire on OK -> ALARM only


class ApprovalStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class Approval(Base):
    """A request to promote a dataset's challenger, opened by a comparison that recommends
    it; an approver key decides it before `expires_at`. On AWS an execution of the renewal
    state machine waits on `task_token`."""

    __tablename__ = "approvals"

    approval_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    champion_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    challenger_model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    comparison: Mapped[dict[str, Any]] = mapped_column(JSON)  # what recommended it
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    execution: Mapped[str | None] = mapped_column(String(2048), nullable=True)


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
