"""Objects under raw/ that no dataset claims: kept under unclaimed/ and listed, never lost.

An object for a dataset not registered yet goes back under raw/ when the dataset is
registered (or on a retry), and S3 announces it to the ingest queue as any new upload.
An object whose key names no dataset stays listed with its reason, until it expires.
"""

from __future__ import annotations

from sqlalchemy import Engine

from gallop.layout import unclaimed_key
from gallop.metadata import repo
from gallop.metadata.models import UnclaimedUpload
from gallop.storage import ObjectMissing, Store, object_id


class NeverClaimable(ValueError):
    """Its key names no dataset: no registration can claim it."""


class DatasetStillUnknown(LookupError):
    pass


class UnclaimedGone(LookupError):
    """Its object under unclaimed/ is no longer there (expired, or deleted by a person)."""


def keep(
    store: Store, engine: Engine, key: str, reason: str, dataset: str | None
) -> tuple[UnclaimedUpload, bool]:
    """Move the object at `key` under unclaimed/ and record why. Returns (record, new): new
    is False for an event seen before, True for a first sighting or new bytes."""
    try:
        size, etag = store.head(key)
    except ObjectMissing:
        try:  # moved already: the same S3 event again
            return repo.get_unclaimed(engine, object_id(key)), False
        except repo.UnclaimedNotFound:
            raise ObjectMissing(key) from None
    record = UnclaimedUpload(
        id=object_id(key),
        key=key,
        unclaimed_key=unclaimed_key(key),
        dataset=dataset,
        size=size,
        etag=etag,
        reason=reason,
    )
    store.copy(key, record.unclaimed_key)
    kept = repo.keep_unclaimed(engine, record)
    store.delete(key)
    return kept


def retry(store: Store, engine: Engine, unclaimed_id: str) -> UnclaimedUpload:
    """Send one unclaimed upload back to be ingested, if its dataset exists now."""
    record = repo.get_unclaimed(engine, unclaimed_id)
    if record.dataset is None:
        raise NeverClaimable(
            f"{record.key!r} can never be claimed ({record.reason}); "
            f"copy the file again to raw/{{dataset}}/ and it is ingested"
        )
    try:
        repo.get_dataset(engine, record.dataset)
    except repo.DatasetNotFound:
        raise DatasetStillUnknown(
            f"there is still no dataset named {record.dataset!r}; registering it "
            "(POST /v1/datasets) ingests its unclaimed uploads"
        ) from None
    _requeue(store, engine, record)
    return record


def claim(store: Store, engine: Engine, dataset: str) -> list[UnclaimedUpload]:
    """Send back what was kept for `dataset` (just registered). Those whose object has
    gone are forgotten, not sent."""
    claimed = []
    for record in repo.list_unclaimed(engine, dataset):
        try:
            _requeue(store, engine, record)
        except UnclaimedGone:
            continue
        claimed.append(record)
    return claimed


def _requeue(store: Store, engine: Engine, record: UnclaimedUpload) -> None:
    """Back under raw/, where S3 notifies the ingest queue; then no longer unclaimed."""
    try:
        store.copy(record.unclaimed_key, record.key)
    except ObjectMissing:
        repo.forget_unclaimed(engine, record.id)
        raise UnclaimedGone(
            f"{record.unclaimed_key!r} is no longer there (expired or deleted); "
            "copy the file to raw/ again"
        ) from None
    store.delete(record.unclaimed_key)
    repo.forget_unclaimed(engine, record.id)
