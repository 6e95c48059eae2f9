"""Ingest one uploaded object: read, validate, and store a version (VALID or REJECTED).

Visibility is one step: data, report and manifest are written under keys derived from
the content hash (each PUT is atomic, and a retry writes the same bytes to the same
keys), and the version exists for every reader (API, features, training) only once
its metadata row commits. A crash before that commit leaves no version, and the
retried message finishes the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from gallop.ingest.canonical import content_hash, rejected_hash, to_parquet, version_id_for
from gallop.ingest.formats import format_of
from gallop.ingest.problems import Problem, UnreadableFile
from gallop.ingest.readers import read_table
from gallop.ingest.validate import Validation, validate
from gallop.metadata import repo
from gallop.metadata.models import Dataset, VersionStatus
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, RawKey, Store, curated_prefix, quarantine_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    dataset: str
    upload_id: str
    status: str
    version_id: str | None
    created: bool  # False when the event or the content had been seen before


class UnknownDataset(LookupError):
    pass


def ingest_object(key: str, store: Store, engine: Engine, settings: Settings) -> Outcome:
    raw = RawKey.parse(key)
    try:
        dataset = repo.get_dataset(engine, raw.dataset)
    except repo.DatasetNotFound as exc:
        raise UnknownDataset(
            f"{key}: no dataset named {raw.dataset!r}; register it with POST /v1/datasets"
        ) from exc
    spec = repo.spec_of(dataset)

    upload = _upload_for(engine, dataset, raw)
    try:
        size, etag = store.head(key)
    except ObjectMissing:
        if upload.status != VersionStatus.PENDING.value:  # a repeat of a settled event
            return Outcome(dataset.name, raw.upload_id, upload.status, upload.version_id, False)
        raise
    if upload.status != VersionStatus.PENDING.value and upload.etag == etag:
        # The same S3 event again (SQS delivers at least once): already settled. New bytes
        # under the same key (a presigned POST used twice, an overwrite) are a new upload.
        return Outcome(dataset.name, raw.upload_id, upload.status, upload.version_id, False)

    if size > settings.max_upload_bytes:
        problem = Problem(
            "file_too_large",
            f"the file is {size:,} bytes; the limit is {settings.max_upload_bytes:,} bytes",
        )
        return _reject(store, engine, dataset, spec, raw, size, etag, [problem], data=None)

    data = store.get_bytes(key)
    try:
        frame = read_table(data, format_of(raw.filename))
    except UnreadableFile as exc:
        return _reject(store, engine, dataset, spec, raw, size, etag, [exc.problem], data=data)

    result = validate(frame, spec, limit=settings.report_max_rows)
    if not result.ok:
        return _reject(
            store,
            engine,
            dataset,
            spec,
            raw,
            size,
            etag,
            result.problems,
            data=data,
            warnings=result.warnings,
        )
    return _accept(store, engine, dataset, spec, raw, etag, result)


def _upload_for(engine: Engine, dataset: Dataset, raw: RawKey) -> Any:
    try:
        return repo.get_upload(engine, dataset, raw.upload_id)
    except repo.UploadNotFound:
        # Copied straight into raw/ (aws s3 cp) rather than through the API.
        fmt = raw.filename.rsplit(".", 1)[-1]
        try:
            return repo.create_upload(engine, dataset, raw.upload_id, raw.key, fmt[:16])
        except IntegrityError:  # the same event, handled concurrently
            return repo.get_upload(engine, dataset, raw.upload_id)


def _accept(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    raw: RawKey,
    etag: str,
    result: Validation,
) -> Outcome:
    frame = result.canonical
    assert frame is not None
    digest = content_hash(frame, spec)
    version_id = version_id_for(digest, valid=True)
    existing = repo.find_version(engine, dataset, version_id)
    if existing is not None:
        repo.record_version(engine, dataset, raw.upload_id, etag, version_id=version_id)
        return Outcome(dataset.name, raw.upload_id, existing.status, version_id, False)

    prefix = curated_prefix(dataset.name, version_id)
    groups = int(frame[spec.group].nunique()) if spec.group else None
    report = _report(spec, raw, "VALID", len(frame), groups, [], result.warnings)
    report.update(features=result.features, text_columns=result.text_columns)
    manifest = {
        "dataset": dataset.name,
        "version_id": version_id,
        "content_hash": digest,
        "spec": spec.model_dump(mode="json"),
        "columns": {name: str(dtype) for name, dtype in frame.dtypes.items()},
        "features": result.features,
        "rows": len(frame),
        "groups": groups,
        "source_key": raw.key,
    }
    store.put_bytes(prefix + "data.parquet", to_parquet(frame), "application/vnd.apache.parquet")
    store.put_json(prefix + "report.json", report)
    store.put_json(prefix + "manifest.json", manifest)
    version, created = repo.record_version(
        engine,
        dataset,
        raw.upload_id,
        etag,
        version_id=version_id,
        status=VersionStatus.VALID.value,
        content_hash=digest,
        row_count=len(frame),
        group_count=groups,
        source_key=raw.key,
        data_key=prefix + "data.parquet",
        report_key=prefix + "report.json",
        report=report,
    )
    return Outcome(dataset.name, raw.upload_id, version.status, version_id, created)


def _reject(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    raw: RawKey,
    size: int,
    etag: str,
    problems: list[Problem],
    *,
    data: bytes | None,
    warnings: list[Problem] | None = None,
) -> Outcome:
    digest = rejected_hash(data if data is not None else f"{raw.key}:{size}".encode(), spec)
    version_id = version_id_for(digest, valid=False)
    quarantine = quarantine_prefix(dataset.name, raw.upload_id)
    report = _report(spec, raw, "REJECTED", None, None, problems, warnings or [])
    report["size_bytes"] = size
    # Keep the upload (never lose what a user sent) and its report side by side; the upload
    # sits in a folder of its own so that no file name can collide with the report.
    kept = quarantine + "upload/" + raw.filename
    store.copy(raw.key, kept)
    store.put_json(quarantine + "report.json", report)
    version, created = repo.record_version(
        engine,
        dataset,
        raw.upload_id,
        etag,
        version_id=version_id,
        status=VersionStatus.REJECTED.value,
        content_hash=digest,
        row_count=None,
        group_count=None,
        source_key=kept,
        data_key=None,
        report_key=quarantine + "report.json",
        report=report,
    )
    store.delete(raw.key)
    return Outcome(dataset.name, raw.upload_id, version.status, version_id, created)


def _report(
    spec: DatasetSpec,
    raw: RawKey,
    status: str,
    rows: int | None,
    groups: int | None,
    problems: list[Problem],
    warnings: list[Problem],
) -> dict[str, Any]:
    return {
        "status": status,
        "dataset": spec.name,
        "upload_id": raw.upload_id,
        "file": raw.filename,
        "checked_at": datetime.now(UTC).isoformat(),
        "rows": rows,
        "groups": groups,
        "errors": [p.to_dict() for p in problems],
        "warnings": [p.to_dict() for p in warnings],
    }
