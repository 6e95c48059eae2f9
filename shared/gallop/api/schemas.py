"""Request and reply bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gallop.layout import APPEND
from gallop.spec import NAME_PATTERN, DatasetSpec
from gallop.training.config import ALL_BASE_MODELS, DEFAULT_BASES

# Path parameters: an id past its pattern is refused (422) before it is looked up, so no
# reply or log line says back 100,000 characters.
DatasetName = Annotated[str, Path(pattern=NAME_PATTERN, description="The dataset's name.")]
VersionId = Annotated[
    str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="A dataset version id.")
]
UploadId = Annotated[
    str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="An upload id.")
]
# Not its pattern: a model id that cannot be is not found (404), as in a predict request.
ModelId = Annotated[str, Path(max_length=66, description="m-{run id}")]


class DatasetOut(BaseModel):
    name: str
    spec: DatasetSpec
    spec_hash: str
    created_at: datetime


UploadMode = Literal["replace", "append"]


class UploadRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"format": "csv"},
                {"format": "csv", "mode": APPEND},
                {"format": "parquet", "mode": APPEND, "corrections": True},
            ]
        }
    )

    format: Literal["csv", "parquet", "jsonl", "csv.gz", "jsonl.gz"] = Field(
        default="csv",
        description="The file's format: csv (UTF-8), parquet or jsonl; csv.gz and jsonl.gz "
        "for gzip-compressed text.",
    )
    mode: UploadMode = Field(
        default="replace",
        description="replace: the file is the whole dataset (a version of its own rows). "
        "append: the newest VALID version plus the file's rows, validated as a whole; the key "
        "is under raw/{dataset}/append/ (raw/{dataset}/corrections/ with corrections).",
    )
    corrections: bool = Field(
        default=False,
        strict=True,  # true or false, not "yes" or 1
        description="append only: a race already stored that the file sends again (a stewards' "
        "correction, a disqualification) replaces the stored race's rows; without it such a "
        "race is an error (group_already_stored).",
    )

    @field_validator("corrections")
    @classmethod
    def _corrections_append(cls, corrections: bool, info: ValidationInfo) -> bool:
        if corrections and info.data.get("mode") != APPEND:
            raise ValueError(
                'corrections replace stored races of an append: give "mode": "append" too '
                "(a replace upload is the whole dataset, and replaces every race anyway)"
            )
        return corrections


class UploadOut(BaseModel):
    upload_id: str
    key: str = Field(
        description="Where the file will land: raw/{dataset}/{upload_id}/{file}, or under "
        "raw/{dataset}/append/ or raw/{dataset}/corrections/ for an append."
    )
    mode: UploadMode = Field(description="replace or append, as the key says.")
    corrections: bool = Field(
        description="An append whose races may replace stored ones.", examples=[False]
    )
    url: str = Field(description="POST the file here as multipart/form-data ...")
    fields: dict[str, str] = Field(description="... with these form fields before the file.")
    max_bytes: int
    expires_at: datetime


class UploadStatus(BaseModel):
    upload_id: str
    key: str = Field(description="Where the file landed under raw/.")
    mode: UploadMode = Field(
        description="replace or append: the key's first folder under raw/{dataset}/ says "
        "which (append/ or corrections/ is an append)."
    )
    corrections: bool = Field(
        description="Landed under raw/{dataset}/corrections/.", examples=[False]
    )
    etag: str | None = Field(
        description="Its bytes' ETag (none yet for an unused form): new bytes under the same "
        "key are another upload."
    )
    status: Literal["PENDING", "VALID", "REJECTED"]
    version_id: str | None
    report_key: str | None = Field(
        description="Where its report is: beside the kept file in quarantine/ when REJECTED, "
        "the version's when VALID."
    )
    report: dict[str, Any] | None = Field(description="This file's own validation report.")
    created_at: datetime
    processed_at: datetime | None


class UnclaimedOut(BaseModel):
    id: str
    key: str = Field(description="Where the file landed under raw/.")
    unclaimed_key: str = Field(description="Where it is kept until a dataset claims it.")
    dataset: str | None = Field(
        description="The dataset its key names (not registered yet); none if the key names "
        "no dataset, when it can never be claimed."
    )
    size: int
    etag: str
    reason: str
    first_seen: datetime


class VersionSummary(BaseModel):
    version_id: str
    status: Literal["PENDING", "VALID", "REJECTED"]
    row_count: int | None
    group_count: int | None
    content_hash: str
    created_at: datetime
    errors: int
    warnings: int
    parent_version_id: str | None = Field(
        description="An appended version's parent: the VALID version it adds rows to "
        "(none for a version uploaded whole)."
    )
    rows_added: int | None = Field(
        description="The rows an append added (a race it corrected counts its new rows)."
    )
    rows_replaced: int | None = Field(
        description="The parent's rows that corrections replaced (0 without corrections)."
    )


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
    build: dict[str, Any] | None = Field(
        None,
        description="How it was built: kind 'incremental' (the parent version's snapshot "
        "extended by an append's rows) or 'full', with the parent and the reason.",
        examples=[
            {"kind": "incremental", "parent_version_id": "v-3f9a0c2b1d4e5f60", "reason": None}
        ],
    )
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
    # strict: true is not a number, nor "0.2"
    model_config = ConfigDict(extra="forbid", strict=True)

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
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        max_length=50,
        description="Passed to every base job (e.g. num_boost_round, learning_rate); each "
        "is checked (name, type, range, cost) before the run is queued.",
    )
    test_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the groups (latest races) held out."
    )
    time_limit: float | None = Field(
        default=None,
        ge=1,
        description="Seconds for the run: the boosted bases search their hyperparameters "
        "within it first, deterministically (same data, seed and limit: the same model). "
        "At most the server's run_time_limit_max.",
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


class ModelOut(BaseModel):
    model_id: str
    task: str
    artifact_key: str = Field(description="model.tar.gz: the whole model directory.")
    onnx_key: str
    manifest_key: str
    report_key: str
    created_at: datetime


RunStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


class TrainingRunOut(BaseModel):
    run_id: str
    dataset: str
    version_id: str
    spec_hash: str
    code_version: str
    config: dict[str, Any]
    status: RunStatus
    attempt: int
    stage: str | None = Field(description="Progress, in words.")
    reason: str | None = Field(description="Why the run FAILED (or was CANCELLED).")
    metrics: dict[str, float] | None = Field(description="The stack's held-out metrics.")
    execution: str | None = Field(description="Step Functions execution ARN, or 'local'.")
    model: ModelOut | None
    report_url: str | None = Field(description="A presigned link to the run's HTML report.")
    links: dict[str, str]
    created_at: datetime
    updated_at: datetime
