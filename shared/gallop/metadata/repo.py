"""Data access for datasets, their versions and uploads (claimed or not)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine, Select, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from gallop.metadata.db import session_scope
from gallop.metadata.models import (
    CaptureFile,
    Dataset,
    DatasetVersion,
    DriftCheck,
    FeatureSet,
    LiveQuality,
    UnclaimedUpload,
    Upload,
    UTCDateTime,
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


class UnclaimedNotFound(LookupError):
    pass


class BadCursor(ValueError):
    """A page cursor that this API did not hand out (or for another list)."""


# -- pages: keyset pagination ---------------------------------------------------------------
# A page is the rows after the last one of the page before, in a fixed order whose last
# column is unique: no OFFSET (which rereads every row skipped and shifts when rows are
# added), and a row added meanwhile is neither skipped nor repeated. The cursor is that
# last row's sort key, as opaque base64.

Order = Sequence[tuple[InstrumentedAttribute[Any], bool]]  # (column, descending)


def keyset_page(
    session: Session, query: Select[Any], order: Order, limit: int | None, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Up to `limit` rows of the query after the cursor's row (every row: None), and the
    next page's cursor (None on the last page)."""
    if cursor:
        query = query.where(_after(order, decode_cursor(cursor, order)))
    query = query.order_by(*(column.desc() if desc else column for column, desc in order))
    rows = list(session.scalars(query if limit is None else query.limit(limit + 1)))
    if limit is None or len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor([getattr(rows[-1], column.key) for column, _ in order])


def _after(order: Order, values: list[Any]) -> Any:
    """Rows after the key (a, b) in order: a beyond its value, or equal and b beyond."""
    clauses = []
    for i, (column, desc) in enumerate(order):
        equal = [c == v for (c, _), v in zip(order[:i], values[:i], strict=True)]
        beyond = column < values[i] if desc else column > values[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(order):
            raise ValueError("not this list's sort key")
        return [
            datetime.fromisoformat(v) if isinstance(c.expression.type, UTCDateTime) else v
            for (c, _), v in zip(order, values, strict=True)
        ]
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("the cursor is not one this list handed out") from None


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
    return page_datasets(engine, None)[0]


def page_datasets(
    engine: Engine, limit: int | None, cursor: str | None = None
) -> tuple[list[Dataset], str | None]:
    with session_scope(engine) as session:
        return keyset_page(session, select(Dataset), [(Dataset.name, False)], limit, cursor)


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


def count_redrive(engine: Engine, upload_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Upload).where(Upload.upload_id == upload_id).values(redriven=Upload.redriven + 1)
        )


def upload_of_object(
    engine: Engine, dataset: Dataset, key: str, etag: str, file_format: str, new_id: str
) -> Upload:
    """The upload these bytes under this key are: the one seen before, else the API's
    unused form for the key (claimed now, so that other bytes cannot take it too), else
    a new upload with the id `new_id`."""
    try:
        with session_scope(engine) as session:
            seen = session.scalar(select(Upload).where(Upload.key == key, Upload.etag == etag))
            if seen is not None:
                return seen
            form = session.scalar(select(Upload).where(Upload.key == key, Upload.etag.is_(None)))
            if form is not None and _claim(session, form.upload_id, etag):
                claimed = session.get(Upload, form.upload_id, populate_existing=True)
                assert claimed is not None  # claimed in this transaction, so still there
                return claimed
            upload = Upload(
                upload_id=new_id,
                dataset_id=dataset.id,
                key=key,
                file_format=file_format,
                status=VersionStatus.PENDING.value,
                etag=etag,
            )
            session.add(upload)
        return upload
    except IntegrityError:  # the same object, handled concurrently
        with session_scope(engine) as session:
            seen = session.scalar(select(Upload).where(Upload.key == key, Upload.etag == etag))
            if seen is None:
                raise
            return seen


def _claim(session: Any, upload_id: str, etag: str) -> bool:
    claimed = session.execute(
        update(Upload).where(Upload.upload_id == upload_id, Upload.etag.is_(None)).values(etag=etag)
    )
    return bool(claimed.rowcount)


def page_uploads(
    engine: Engine, dataset: Dataset, key_prefix: str, limit: int | None, cursor: str | None = None
) -> tuple[list[Upload], str | None]:
    """A page of the dataset's uploads (of keys that start with key_prefix), oldest first."""
    with session_scope(engine) as session:
        query = select(Upload).where(Upload.dataset_id == dataset.id)
        if key_prefix:
            query = query.where(Upload.key.startswith(key_prefix, autoescape=True))
        order = [(Upload.created_at, False), (Upload.upload_id, False)]
        return keyset_page(session, query, order, limit, cursor)


def latest_upload_of_key(engine: Engine, key: str) -> Upload | None:
    with session_scope(engine) as session:
        query = select(Upload).where(Upload.key == key)
        return session.scalar(query.order_by(Upload.created_at.desc(), Upload.upload_id))


def list_versions(engine: Engine, dataset: Dataset) -> list[DatasetVersion]:
    return page_versions(engine, dataset, None)[0]


def page_versions(
    engine: Engine, dataset: Dataset, limit: int | None, cursor: str | None = None
) -> tuple[list[DatasetVersion], str | None]:
    with session_scope(engine) as session:
        query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
        order = [(DatasetVersion.created_at, False), (DatasetVersion.id, False)]
        return keyset_page(session, query, order, limit, cursor)


def find_version(engine: Engine, dataset: Dataset, version_id: str) -> DatasetVersion | None:
    with session_scope(engine) as session:
        return session.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.version_id == version_id
            )
        )


def newest_valid_version(engine: Engine, dataset: Dataset) -> DatasetVersion | None:
    """The version an append extends."""
    with session_scope(engine) as session:
        return _newest_valid(session, dataset.id)


def _newest_valid(session: Any, dataset_id: int) -> DatasetVersion | None:
    return session.scalar(
        select(DatasetVersion)
        .where(
            DatasetVersion.dataset_id == dataset_id,
            DatasetVersion.status == VersionStatus.VALID.value,
        )
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
        .limit(1)
    )


class ParentMoved(RuntimeError):
    """Another version became the newest while an append was built on the one before:
    built again on the new one (the ingest message is retried), never merged blindly."""


def record_version(
    engine: Engine,
    dataset: Dataset,
    upload_id: str,
    etag: str,
    expected_parent: str | None = None,
    **fields: Any,
) -> tuple[DatasetVersion, bool]:
    """Store a version and settle its upload in one transaction: the step that makes a
    version visible. A version that already exists is kept as it is (same content hash,
    same version), so a repeated upload or event adds nothing. Returns (version, created).
    An append (`expected_parent`) commits only while its parent is still the newest VALID
    version (ParentMoved otherwise).
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
            if version is None and expected_parent is not None:
                # Two appends at once: the second must extend the first, not its parent.
                session.scalar(select(Dataset).where(Dataset.id == dataset.id).with_for_update())
                newest = _newest_valid(session, dataset.id)
                if newest is None or newest.version_id != expected_parent:
                    raise ParentMoved(
                        f"{dataset.name}: {newest.version_id if newest else 'no version'} is "
                        f"the newest VALID version now, not {expected_parent}"
                    )
            if version is None:
                version = DatasetVersion(dataset_id=dataset.id, **fields)
                session.add(version)
            _settle_upload(session, upload_id, version.status, version_id, etag, fields)
        return version, created
    except IntegrityError:
        # Another worker stored the same version between our read and write.
        existing = find_version(engine, dataset, version_id)
        if existing is None:
            raise
        with session_scope(engine) as session:
            _settle_upload(session, upload_id, existing.status, version_id, etag, fields)
        return existing, False


def _settle_upload(
    session: Any, upload_id: str, status: str, version_id: str, etag: str, fields: dict[str, Any]
) -> None:
    upload = session.get(Upload, upload_id)
    if upload is not None:
        upload.status = status
        upload.version_id = version_id
        upload.etag = etag
        upload.report_key = fields.get("report_key")
        upload.report = fields.get("report")
        upload.processed_at = utcnow()


def forget_version(engine: Engine, version: DatasetVersion) -> None:
    """Unmake a version whose objects are lost: its row and its feature sets go, and the
    uploads that became it are PENDING again, so that their raw objects (or the same
    bytes uploaded anew) are ingested again."""
    with session_scope(engine) as session:
        session.execute(
            update(Upload)
            .where(Upload.dataset_id == version.dataset_id)
            .where(Upload.version_id == version.version_id)
            .values(
                status=VersionStatus.PENDING.value, version_id=None, etag=None, processed_at=None
            )
        )
        session.execute(
            delete(FeatureSet)
            .where(FeatureSet.dataset_id == version.dataset_id)
            .where(FeatureSet.version_id == version.version_id)
        )
        session.execute(delete(DatasetVersion).where(DatasetVersion.id == version.id))


def forget_feature_set(engine: Engine, feature_set: FeatureSet) -> None:
    """Unmake a feature set whose objects are lost, so that it can be built again."""
    with session_scope(engine) as session:
        session.execute(delete(FeatureSet).where(FeatureSet.id == feature_set.id))


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
    return page_feature_sets(engine, dataset, version_id, None)[0]


def page_feature_sets(
    engine: Engine,
    dataset: Dataset,
    version_id: str,
    limit: int | None,
    cursor: str | None = None,
) -> tuple[list[FeatureSet], str | None]:
    with session_scope(engine) as session:
        query = select(FeatureSet).where(
            FeatureSet.dataset_id == dataset.id, FeatureSet.version_id == version_id
        )
        order = [(FeatureSet.created_at, False), (FeatureSet.id, False)]
        return keyset_page(session, query, order, limit, cursor)


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


def keep_unclaimed(engine: Engine, record: UnclaimedUpload) -> tuple[UnclaimedUpload, bool]:
    """Record an object kept under unclaimed/, or its new bytes (a key is one record: its
    object under unclaimed/ is the newest copy). Returns (record, new bytes)."""
    try:
        with session_scope(engine) as session:
            kept = session.get(UnclaimedUpload, record.id)
            if kept is None:
                session.add(record)
                return record, True
            fresh = kept.etag != record.etag
            kept.size, kept.etag, kept.reason = record.size, record.etag, record.reason
            return kept, fresh
    except IntegrityError:  # the same event, handled concurrently
        return get_unclaimed(engine, record.id), False


def get_unclaimed(engine: Engine, unclaimed_id: str) -> UnclaimedUpload:
    with session_scope(engine) as session:
        record = session.get(UnclaimedUpload, unclaimed_id)
        if record is None:
            raise UnclaimedNotFound(unclaimed_id)
        return record


def list_unclaimed(engine: Engine, dataset: str | None = None) -> list[UnclaimedUpload]:
    """Every unclaimed upload, or those whose key names `dataset`, oldest first."""
    return page_unclaimed(engine, None, dataset=dataset)[0]


def page_unclaimed(
    engine: Engine, limit: int | None, cursor: str | None = None, dataset: str | None = None
) -> tuple[list[UnclaimedUpload], str | None]:
    """A page of the unclaimed uploads (of those whose key names `dataset`), oldest first."""
    with session_scope(engine) as session:
        query = select(UnclaimedUpload)
        if dataset is not None:
            query = query.where(UnclaimedUpload.dataset == dataset)
        order = [(UnclaimedUpload.first_seen, False), (UnclaimedUpload.id, False)]
        return keyset_page(session, query, order, limit, cursor)


def forget_unclaimed(engine: Engine, unclaimed_id: str) -> None:
    with session_scope(engine) as session:
        record = session.get(UnclaimedUpload, unclaimed_id)
        if record is not None:
            session.delete(record)


# -- monitoring (issue #13) ------------------------------------------------------------------


class DayFigures(Protocol):
    """One day of a model's live figures (gallop.monitoring.quality.DayQuality)."""

    @property
    def day(self) -> str: ...  # YYYY-MM-DD
    @property
    def groups(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...


def record_live_quality(engine: Engine, model_id: str, days: Sequence[DayFigures]) -> None:
    """Store a model's figures for these days, each day replaced whole (a metric that has
    no value any more goes too): recomputing a day as results arrive is idempotent."""
    for attempt in (1, 2):
        try:
            with session_scope(engine) as session:
                for figures in days:
                    day = date.fromisoformat(figures.day)
                    session.execute(
                        delete(LiveQuality).where(
                            LiveQuality.model_id == model_id, LiveQuality.day == day
                        )
                    )
                    session.add_all(
                        LiveQuality(
                            model_id=model_id,
                            day=day,
                            metric=metric,
                            value=value if math.isfinite(value) else None,
                            groups=figures.groups,
                            rows=figures.rows,
                        )
                        for metric, value in figures.metrics.items()
                    )
            return
        except IntegrityError:  # another monitor wrote the same day meanwhile: write again
            if attempt == 2:
                raise


def live_quality_of(engine: Engine, model_id: str, since: date | None = None) -> list[LiveQuality]:
    """A model's stored daily figures (from `since` on), by day then metric."""
    with session_scope(engine) as session:
        query = select(LiveQuality).where(LiveQuality.model_id == model_id)
        if since is not None:
            query = query.where(LiveQuality.day >= since)
        return list(session.scalars(query.order_by(LiveQuality.day, LiveQuality.metric)))


def record_drift_check(
    engine: Engine,
    model_id: str,
    rows: int,
    table: list[dict[str, Any]],
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    checked_at: datetime | None = None,
) -> DriftCheck:
    """Store one drift check; `flagged` counts its flagged features (what DriftedFeatures
    reports: the score's row, "(score)", is shown in the table but is no feature)."""
    from gallop.monitoring.drift import SCORE

    check = DriftCheck(
        model_id=model_id,
        checked_at=checked_at or utcnow(),
        rows=rows,
        window_start=window_start,
        window_end=window_end,
        flagged=sum(1 for row in table if row.get("flagged") and row["feature"] != SCORE),
        table=[{k: _finite_or_none(v) for k, v in row.items()} for row in table],
    )
    with session_scope(engine) as session:
        session.add(check)
    return check


def _finite_or_none(value: Any) -> Any:
    """NaN and infinity as None: JSON has no such numbers (Postgres refuses them)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def latest_drift_check(engine: Engine, model_id: str) -> DriftCheck | None:
    with session_scope(engine) as session:
        query = select(DriftCheck).where(DriftCheck.model_id == model_id)
        return session.scalar(query.order_by(DriftCheck.checked_at.desc(), DriftCheck.id.desc()))


def unread_capture_keys(engine: Engine, keys: Sequence[str]) -> list[str]:
    """The keys, in the order given, that the monitor has not read yet."""
    read: set[str] = set()
    with session_scope(engine) as session:
        for start in range(0, len(keys), 500):  # an IN list of bounded length
            chunk = list(keys[start : start + 500])
            read.update(session.scalars(select(CaptureFile.key).where(CaptureFile.key.in_(chunk))))
    return [key for key in keys if key not in read]


def record_capture_files(engine: Engine, files: Sequence[CaptureFile]) -> int:
    """Mark capture objects read (a key already marked keeps its first record); returns
    how many were new."""
    fresh = unread_capture_keys(engine, [f.key for f in files])
    wanted = set(fresh)
    try:
        with session_scope(engine) as session:
            session.add_all(f for f in files if f.key in wanted)
        return len(fresh)
    except IntegrityError:  # a concurrent monitor marked some: mark the rest one by one
        added = 0
        for f in files:
            if f.key in wanted:
                try:
                    with session_scope(engine) as session:
                        session.add(f)
                    added += 1
                except IntegrityError:
                    pass
        return added


def captured_rows_read(engine: Engine, model_id: str, since: datetime | None = None) -> int:
    """Rows of a model's capture objects read (after `since`): what the drift trigger counts."""
    with session_scope(engine) as session:
        query = select(func.coalesce(func.sum(CaptureFile.rows), 0)).where(
            CaptureFile.model_id == model_id
        )
        if since is not None:
            query = query.where(CaptureFile.read_at > since)
        return int(session.scalar(query) or 0)
