"""Ingest one uploaded object: read, validate, and store a version (VALID or REJECTED).

Visibility is one step: data, report and manifest are written under keys derived from
the content hash (each PUT is atomic, and a retry writes the same bytes to the same
keys), and the version exists for every reader (API, features, training) only once
its metadata row commits. A crash before that commit leaves no version, and the
retried message finishes the job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from gallop.crashpoint import READING_UPLOAD, VERSION_RECORDED, crash_point
from gallop.ingest.append import Parent, column_problems, extend, type_problems
from gallop.ingest.canonical import (
    group_index,
    hash_of_rows,
    index_from_bytes,
    index_to_bytes,
    read_canonical,
    rejected_hash,
    row_hashes,
    to_parquet,
    version_id_for,
)
from gallop.ingest.formats import format_of
from gallop.ingest.problems import Problem, UnreadableFile, capped
from gallop.ingest.readers import Limits, read_table
from gallop.ingest.validate import Validation, validate
from gallop.layout import (
    APPEND,
    APPENDED_FILE,
    DATA_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    ROW_INDEX_FILE,
    RawKey,
    curated_prefix,
    quarantine_prefix,
    quarantined_upload_key,
)
from gallop.metadata import repo
from gallop.metadata.models import Dataset, VersionStatus
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store, object_id

log = logging.getLogger(__name__)
MAX_NAMED = 100  # replaced races named in a report


@dataclass(frozen=True)
class Outcome:
    dataset: str
    upload_id: str
    status: str
    version_id: str | None
    created: bool  # False when the event or the content had been seen before


@dataclass(frozen=True)
class Arrival:
    """One object under raw/ and the upload it is."""

    raw: RawKey
    upload_id: str
    size: int
    etag: str


class UnknownDataset(LookupError):
    def __init__(self, key: str, dataset: str) -> None:
        super().__init__(
            f"{key}: no dataset named {dataset!r}; register it with POST /v1/datasets "
            "and this upload is ingested"
        )
        self.dataset = dataset


def ingest_object(key: str, store: Store, engine: Engine, settings: Settings) -> Outcome:
    raw = RawKey.parse(key)
    try:
        dataset = repo.get_dataset(engine, raw.dataset)
    except repo.DatasetNotFound as exc:
        raise UnknownDataset(key, raw.dataset) from exc
    spec = repo.spec_of(dataset)

    try:
        size, etag = store.head(key)
    except ObjectMissing:
        # A repeat of a settled event: a rejected upload has moved to quarantine.
        last = repo.latest_upload_of_key(engine, key)
        if last is not None and last.status != VersionStatus.PENDING.value:
            return Outcome(dataset.name, last.upload_id, last.status, last.version_id, False)
        raise
    upload = _upload_of(engine, dataset, raw, etag)
    if upload.status != VersionStatus.PENDING.value:
        # The same S3 event again (SQS delivers at least once): already settled. New bytes
        # under the same key (a presigned POST used twice, an overwrite) are a new upload.
        return Outcome(dataset.name, upload.upload_id, upload.status, upload.version_id, False)
    arrival = Arrival(raw, upload.upload_id, size, etag)

    if size > settings.max_upload_bytes:
        problem = Problem(
            "file_too_large",
            f"the file is {size:,} bytes; the limit is {settings.max_upload_bytes:,} bytes",
        )
        return _reject(store, engine, dataset, spec, arrival, [problem], data=None)

    data = store.get_bytes(key)
    crash_point(READING_UPLOAD)
    try:
        frame = read_table(data, format_of(raw.filename), Limits.of(settings))
    except UnreadableFile as exc:
        return _reject(store, engine, dataset, spec, arrival, [exc.problem], data=data)

    if raw.mode == APPEND:
        return _append(store, engine, dataset, spec, arrival, frame, data, settings)
    result = validate(frame, spec, limit=settings.report_max_rows)
    if not result.ok:
        return _reject(
            store,
            engine,
            dataset,
            spec,
            arrival,
            result.problems,
            data=data,
            warnings=result.warnings,
        )
    return _accept(store, engine, dataset, spec, arrival, result)


def reject_unprocessable(
    key: str, store: Store, engine: Engine, settings: Settings, reason: str
) -> Outcome:
    """Settle an upload that could not be processed for a reason not understood (a bug):
    REJECTED with an `internal_error`, so that it is answered rather than retried for
    ever. The upload is kept in quarantine like any rejected one."""
    raw = RawKey.parse(key)
    dataset = repo.get_dataset(engine, raw.dataset)
    size, etag = store.head(key)
    upload = _upload_of(engine, dataset, raw, etag)
    if upload.status != VersionStatus.PENDING.value:
        return Outcome(dataset.name, upload.upload_id, upload.status, upload.version_id, False)
    problem = Problem(
        "internal_error",
        f"gallop could not process this upload ({reason}); it is kept, and the details are "
        "in the ingest function's log",
    )
    arrival = Arrival(raw, upload.upload_id, size, etag)
    return _reject(store, engine, dataset, repo.spec_of(dataset), arrival, [problem], data=None)


def _upload_of(engine: Engine, dataset: Dataset, raw: RawKey, etag: str) -> Any:
    """The upload these bytes at this key are (recorded on first sight)."""
    try:
        declared = format_of(raw.filename)
    except UnreadableFile:
        declared = raw.filename.rsplit(".", 1)[-1]  # refused when read, with its reason
    return repo.upload_of_object(
        engine, dataset, raw.key, etag, declared[:16], object_id(raw.key, etag)
    )


@dataclass
class _Rows:
    """What a VALID version is made of, however it came (a whole upload, an append)."""

    dtypes: list[tuple[str, str]]  # canonical columns and their types
    features: list[str]
    text_columns: list[str]
    warnings: list[Problem]
    hashes: np.ndarray  # sorted row hashes of the whole
    groups: np.ndarray | None  # sorted group ids of the whole
    whole: pd.DataFrame | None  # written as data.parquet (a whole upload, a compaction)
    added: pd.DataFrame | None = None  # an append's own rows: append.parquet
    parent: Parent | None = None
    replaced_groups: list[str] = field(default_factory=list)
    rows_replaced: int = 0


def _accept(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    arrival: Arrival,
    result: Validation,
) -> Outcome:
    frame = result.canonical
    assert frame is not None
    rows = _Rows(
        dtypes=[(str(name), str(dtype)) for name, dtype in frame.dtypes.items()],
        features=result.features,
        text_columns=result.text_columns,
        warnings=result.warnings,
        hashes=row_hashes(frame),
        groups=group_index(frame, spec),
        whole=frame,
    )
    return _store_version(store, engine, dataset, spec, arrival, rows)


def _append(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    arrival: Arrival,
    frame: pd.DataFrame,
    data: bytes,
    settings: Settings,
) -> Outcome:
    """An append: the newest VALID version plus these rows, checked as a whole."""
    parent = _parent(store, engine, dataset, spec)

    def reject(problems: list[Problem], warnings: list[Problem] | None = None) -> Outcome:
        return _reject(
            store, engine, dataset, spec, arrival, problems, data=data, warnings=warnings
        )

    if parent is None:
        return reject(
            [
                Problem(
                    "no_valid_version",
                    f"an append extends the newest VALID version of {dataset.name!r}, and "
                    "there is none: upload the history first (mode replace)",
                )
            ]
        )
    problems = column_problems([str(c) for c in frame.columns], parent)
    if problems:
        return reject(problems)
    # The stored version's features, not those this file alone would suggest.
    result = validate(
        frame, spec.model_copy(update={"features": parent.features}), settings.report_max_rows
    )
    if not result.ok:
        return reject(result.problems, result.warnings)
    assert result.canonical is not None
    problems = type_problems(result.canonical, parent)
    if problems:
        return reject(problems, result.warnings)
    extended = extend(
        parent, result, spec, arrival.raw.corrections, store.get_bytes, settings.report_max_rows
    )
    if isinstance(extended, list):
        return reject(extended, result.warnings)
    warnings = result.warnings
    if extended.unchanged:
        warnings = [
            Problem(
                "already_stored",
                f"every row of this append is in version {parent.version_id} already: "
                "nothing changed, and the upload is that version",
            ),
            *warnings,
        ]
    rows = _Rows(
        dtypes=list(parent.columns.items()),
        features=parent.features,
        text_columns=result.text_columns,
        warnings=warnings,
        hashes=extended.hashes,
        groups=extended.groups,
        whole=extended.whole,
        added=extended.added,
        parent=parent,
        replaced_groups=extended.replaced_groups,
        rows_replaced=extended.rows_replaced,
    )
    return _store_version(store, engine, dataset, spec, arrival, rows)


def _parent(store: Store, engine: Engine, dataset: Dataset, spec: DatasetSpec) -> Parent | None:
    version = repo.newest_valid_version(engine, dataset)
    if version is None:
        return None
    prefix = curated_prefix(dataset.name, version.version_id)
    manifest = json.loads(store.get_bytes(prefix + MANIFEST_FILE))
    parts = version.parts or [str(version.data_key)]
    try:
        hashes, groups = index_from_bytes(store.get_bytes(prefix + ROW_INDEX_FILE))
        columns = {name: manifest["columns"][name] for name in manifest["column_order"]}
    except (ObjectMissing, KeyError):  # a version stored before appends: indexed once
        whole = read_canonical(store.get_bytes, parts, spec)
        hashes, groups = row_hashes(whole), group_index(whole, spec)
        columns = {str(name): str(dtype) for name, dtype in whole.dtypes.items()}
    return Parent(version.version_id, parts, columns, manifest["features"], hashes, groups)


def _store_version(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    arrival: Arrival,
    rows: _Rows,
) -> Outcome:
    digest = hash_of_rows(spec, rows.dtypes, rows.hashes)
    version_id = version_id_for(digest, valid=True)
    n_rows = len(rows.hashes)
    n_groups = len(rows.groups) if rows.groups is not None else None
    report = _report(spec, arrival, "VALID", n_rows, n_groups, [], rows.warnings)
    report.update(features=rows.features, text_columns=rows.text_columns)
    lineage: dict[str, Any] = {}
    if rows.parent is not None:
        assert rows.added is not None
        lineage = {
            "parent_version_id": rows.parent.version_id,
            "rows_added": len(rows.added),
            "rows_replaced": rows.rows_replaced,
        }
        report["append"] = lineage | {"replaced_groups": rows.replaced_groups[:MAX_NAMED]}
    existing = repo.find_version(engine, dataset, version_id)
    if existing is not None:  # the same rows again (an append sent twice): the same version
        repo.record_version(
            engine,
            dataset,
            arrival.upload_id,
            arrival.etag,
            version_id=version_id,
            report_key=existing.report_key,
            report=report,
        )
        return Outcome(dataset.name, arrival.upload_id, existing.status, version_id, False)

    prefix = curated_prefix(dataset.name, version_id)
    parquet = "application/vnd.apache.parquet"
    parts: list[str] = []
    if rows.whole is not None:
        store.put_bytes(prefix + DATA_FILE, to_parquet(rows.whole), parquet)
        parts = [prefix + DATA_FILE]
    if rows.added is not None:
        store.put_bytes(prefix + APPENDED_FILE, to_parquet(rows.added), parquet)
        if rows.whole is None:
            assert rows.parent is not None
            parts = rows.parent.parts + [prefix + APPENDED_FILE]
    store.put_bytes(
        prefix + ROW_INDEX_FILE,
        index_to_bytes(rows.hashes, rows.groups),
        "application/octet-stream",
    )
    manifest = {
        "dataset": dataset.name,
        "version_id": version_id,
        "content_hash": digest,
        "spec": spec.model_dump(mode="json"),
        "columns": dict(rows.dtypes),
        "column_order": [name for name, _ in rows.dtypes],  # the JSON's keys are sorted
        "features": rows.features,
        "rows": n_rows,
        "groups": n_groups,
        "source_key": arrival.raw.key,
        "parts": parts,
        **lineage,
    }
    store.put_json(prefix + REPORT_FILE, report)
    store.put_json(prefix + MANIFEST_FILE, manifest)
    version, created = repo.record_version(
        engine,
        dataset,
        arrival.upload_id,
        arrival.etag,
        version_id=version_id,
        status=VersionStatus.VALID.value,
        content_hash=digest,
        row_count=n_rows,
        group_count=n_groups,
        source_key=arrival.raw.key,
        data_key=parts[-1],
        report_key=prefix + REPORT_FILE,
        report=report,
        parts=parts,
        **lineage,
        expected_parent=rows.parent.version_id if rows.parent else None,
    )
    crash_point(VERSION_RECORDED)
    return Outcome(dataset.name, arrival.upload_id, version.status, version_id, created)


def _reject(
    store: Store,
    engine: Engine,
    dataset: Dataset,
    spec: DatasetSpec,
    arrival: Arrival,
    problems: list[Problem],
    *,
    data: bytes | None,
    warnings: list[Problem] | None = None,
) -> Outcome:
    raw = arrival.raw
    # A rejected version is one upload's: its report names that upload and its problems.
    size_and_tag = f"{arrival.size}:{arrival.etag}".encode()
    digest = rejected_hash(data if data is not None else size_and_tag, spec, raw.key)
    version_id = version_id_for(digest, valid=False)
    quarantine = quarantine_prefix(dataset.name, arrival.upload_id)
    report = _report(spec, arrival, "REJECTED", None, None, problems, warnings or [])
    report["size_bytes"] = arrival.size
    # Keep the upload (never lose what a user sent) and its report side by side; the upload
    # sits in a folder of its own so that no file name can collide with the report.
    kept = quarantined_upload_key(dataset.name, arrival.upload_id, raw.filename)
    store.copy(raw.key, kept)
    store.put_json(quarantine + REPORT_FILE, report)
    version, created = repo.record_version(
        engine,
        dataset,
        arrival.upload_id,
        arrival.etag,
        version_id=version_id,
        status=VersionStatus.REJECTED.value,
        content_hash=digest,
        row_count=None,
        group_count=None,
        source_key=kept,
        data_key=None,
        report_key=quarantine + REPORT_FILE,
        report=report,
    )
    store.delete(raw.key)
    return Outcome(dataset.name, arrival.upload_id, version.status, version_id, created)


def _report(
    spec: DatasetSpec,
    arrival: Arrival,
    status: str,
    rows: int | None,
    groups: int | None,
    problems: list[Problem],
    warnings: list[Problem],
) -> dict[str, Any]:
    errors, errors_left_out = capped(problems)
    shown_warnings, warnings_left_out = capped(warnings)
    report = {
        "status": status,
        "dataset": spec.name,
        "upload_id": arrival.upload_id,
        "key": arrival.raw.key,
        "file": arrival.raw.filename,
        "checked_at": datetime.now(UTC).isoformat(),
        "rows": rows,
        "groups": groups,
        "errors": [p.to_dict() for p in errors],
        "warnings": [p.to_dict() for p in shown_warnings],
    }
    if errors_left_out or warnings_left_out:
        report.update(errors_left_out=errors_left_out, warnings_left_out=warnings_left_out)
    return report
