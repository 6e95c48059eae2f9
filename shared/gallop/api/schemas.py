"""Request and reply bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from gallop.spec import DatasetSpec


class DatasetOut(BaseModel):
    name: str
    spec: DatasetSpec
    spec_hash: str
    created_at: datetime


class UploadRequest(BaseModel):
    format: Literal["csv", "parquet", "jsonl"] = Field(
        default="csv", description="The file's format: csv (UTF-8), parquet or jsonl."
    )


class UploadOut(BaseModel):
    upload_id: str
    key: str
    url: str = Field(description="POST the file here as multipart/form-data ...")
    fields: dict[str, str] = Field(description="... with these form fields before the file.")
    max_bytes: int
    expires_at: datetime


class UploadStatus(BaseModel):
    upload_id: str
    status: Literal["PENDING", "VALID", "REJECTED"]
    version_id: str | None
    created_at: datetime
    processed_at: datetime | None


class VersionSummary(BaseModel):
    version_id: str
    status: Literal["PENDING", "VALID", "REJECTED"]
    row_count: int | None
    group_count: int | None
    content_hash: str
    created_at: datetime
    errors: int
    warnings: int


class VersionOut(VersionSummary):
    source_key: str
    data_key: str | None
    report_key: str | None
    report: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    version: str


class FeatureSetOut(BaseModel):
    spec_hash: str
    status: Literal["READY", "FAILED"]
    reason: str | None
    row_count: int | None
    features: list[str] | None
    data_key: str | None
    manifest_key: str | None
    state_key: str | None
    created_at: datetime


class CardRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=1000,
        description="Runners of one or more upcoming races: keys and pre-race fields.",
    )


class CardFeatures(BaseModel):
    spec_hash: str
    features: list[str]
    rows: list[list[float | None]] = Field(description="One list of values per card row.")
