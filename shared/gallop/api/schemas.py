"""Request and reply bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gallop.spec import NAME_PATTERN, DatasetSpec
from gallop.training.config import (
    ALL_BASE_MODELS,
    DEFAULT_BASES,
    MAX_TIME_LIMIT,
    RESERVED_HYPERPARAMETERS,
)


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


class TrainingRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=NAME_PATTERN, description="The dataset's name.")
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Dataset version id; default: the newest VALID version.",
    )
    bases: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Base models to stack; default by task: "
        + "; ".join(f"{task}: {', '.join(kinds)}" for task, kinds in DEFAULT_BASES.items())
        + ".",
    )
    hyperparameters: dict[str, int | float | bool | str] = Field(
        default_factory=dict,
        max_length=50,
        description="Passed to every base job (e.g. num_boost_round, learning_rate).",
    )
    test_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the groups (latest races) held out."
    )
    time_limit: float | None = Field(
        default=None,
        ge=1,
        le=MAX_TIME_LIMIT,
        description="Seconds for the run: the boosted bases search their hyperparameters "
        "within it first, deterministically (same data, seed and limit: the same model).",
    )

    @field_validator("bases")
    @classmethod
    def _known_bases(cls, bases: list[str] | None) -> list[str] | None:
        unknown = [name for name in bases or [] if name not in ALL_BASE_MODELS]
        if unknown:
            raise ValueError(
                f"unknown base model(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(ALL_BASE_MODELS)}"
            )
        if bases is not None and len(set(bases)) != len(bases):
            raise ValueError("a base model is named twice")
        return bases

    @field_validator("hyperparameters")
    @classmethod
    def _not_reserved(cls, values: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(values) & set(RESERVED_HYPERPARAMETERS))
        if reserved:
            raise ValueError(f"{reserved} are set by gallop (choose models with 'bases')")
        return values


class ModelOut(BaseModel):
    model_id: str
    task: str
    artifact_key: str = Field(description="model.tar.gz: the whole model directory.")
    onnx_key: str
    manifest_key: str
    report_key: str
    created_at: datetime


class TrainingRunOut(BaseModel):
    run_id: str
    dataset: str
    version_id: str
    spec_hash: str
    code_version: str
    config: dict[str, Any]
    status: Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED"]
    attempt: int
    stage: str | None = Field(description="Progress, in words.")
    reason: str | None = Field(description="Why the run FAILED.")
    metrics: dict[str, float] | None = Field(description="The stack's held-out metrics.")
    execution: str | None = Field(description="Step Functions execution ARN, or 'local'.")
    model: ModelOut | None
    report_url: str | None = Field(description="A presigned link to the run's HTML report.")
    links: dict[str, str]
    created_at: datetime
    updated_at: datetime
