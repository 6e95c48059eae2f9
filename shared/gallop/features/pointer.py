"""The online pointer: which entity snapshot race cards of a dataset are completed from.

For each dataset and feature spec, `online_snapshot_key(dataset, spec_hash)` in the data
bucket names the READY feature set whose dataset version is the newest (by the version's
`created_at`, ties by its row id). The features service publishes it after each READY
feature set (and again when the same request repeats); it is one object, replaced whole,
so a reader sees the old snapshot or the new one, never a mix.

The predict path reads it with `read_pointer` (orjson and the store only: no pandas, no
SQLAlchemy) through `gallop.serving.cache.PointerCache`, trusting what it read for the
alias TTL as it does aliases; the snapshot it names is read by its `state_key`, whose
content never changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from gallop.layout import online_snapshot_key
from gallop.manifests import read_feature_manifest
from gallop.storage import ObjectMissing, Store

if TYPE_CHECKING:  # the predict path imports no SQLAlchemy
    from sqlalchemy import Engine

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rounds of write-then-check: a publisher that lost a race with a newer one writes again.
PUBLISH_ROUNDS = 5


class PointerUnreadable(LookupError):
    """The pointer object is not what `publish` writes."""


@dataclass(frozen=True)
class Pointer:
    dataset: str
    spec_hash: str
    version_id: str
    state_key: str
    data_end: str | None  # ISO 8601, UTC: the start of the newest race in the snapshot
    data_end_us: int | None  # the same, in microseconds since 1970 (UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: Any) -> Pointer:
        try:
            pointer = cls(**payload)
        except TypeError:
            raise PointerUnreadable("the online pointer is not what publishing writes") from None
        texts = (pointer.dataset, pointer.spec_hash, pointer.version_id, pointer.state_key)
        if not all(isinstance(t, str) and t for t in texts) or not (
            pointer.data_end_us is None or type(pointer.data_end_us) is int
        ):
            raise PointerUnreadable("the online pointer is not what publishing writes")
        return pointer


def iso_time(micros: int | None) -> str | None:
    """Microseconds since 1970 (UTC) as ISO 8601, as the feature manifest writes them."""
    return None if micros is None else (EPOCH + timedelta(microseconds=micros)).isoformat()


def micros_of(text: str | None) -> int | None:
    """An ISO 8601 time as microseconds since 1970 (UTC; a time without zone is UTC)."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# -- writing (the features service) -------------------------------------------------------


def newest_ready(engine: Engine, dataset_name: str, spec_hash: str) -> Any:
    """The READY feature set of `spec_hash` whose version is the dataset's newest (None
    when there is none), with its version: (FeatureSet, DatasetVersion)."""
    from sqlalchemy import select

    from gallop.metadata.db import session_scope
    from gallop.metadata.models import Dataset, DatasetVersion, FeatureSet, FeatureStatus

    query = (
        select(FeatureSet, DatasetVersion)
        .join(Dataset, Dataset.id == FeatureSet.dataset_id)
        .join(
            DatasetVersion,
            (DatasetVersion.dataset_id == FeatureSet.dataset_id)
            & (DatasetVersion.version_id == FeatureSet.version_id),
        )
        .where(
            Dataset.name == dataset_name,
            FeatureSet.spec_hash == spec_hash,
            FeatureSet.status == FeatureStatus.READY.value,
            FeatureSet.state_key.is_not(None),
        )
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
        .limit(1)
    )
    with session_scope(engine) as session:
        return session.execute(query).first()


def publish(store: Store, engine: Engine, dataset_name: str, spec_hash: str) -> Pointer | None:
    """Point race cards of the dataset (under this feature spec) at the newest READY
    snapshot; returns what the pointer names (None, and nothing written, when no feature
    set is READY). Called after a READY feature set's row commits.

    Two publishers can finish out of order (the older one read the database before the
    newer feature set committed, and writes after it): each reads the newest again after
    writing, and writes again when it changed, so the last write names the newest."""
    written: Pointer | None = None
    for _ in range(PUBLISH_ROUNDS):
        found = newest_ready(engine, dataset_name, spec_hash)
        if found is None:
            return written
        feature_set, version = found
        if written is not None and written.version_id == version.version_id:
            return written
        written = _pointer_for(store, dataset_name, spec_hash, version.version_id, feature_set)
        store.put_json(online_snapshot_key(dataset_name, spec_hash), written.to_json())
    return written


def _pointer_for(
    store: Store, dataset_name: str, spec_hash: str, version_id: str, feature_set: Any
) -> Pointer:
    """The pointer to a feature set: the time of its newest race from its manifest."""
    data_end = None
    if feature_set.manifest_key:
        manifest = read_feature_manifest(orjson.loads(store.get_bytes(feature_set.manifest_key)))
        data_end = manifest.get("data_end")
    return Pointer(
        dataset=dataset_name,
        spec_hash=spec_hash,
        version_id=version_id,
        state_key=feature_set.state_key,
        data_end=data_end,
        data_end_us=micros_of(data_end),
    )


# -- reading (the predict path) -----------------------------------------------------------


def read_pointer(store: Store, dataset: str, spec_hash: str) -> Pointer | None:
    key = online_snapshot_key(dataset, spec_hash)
    try:
        raw = store.get_bytes(key)
    except ObjectMissing:
        return None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PointerUnreadable(f"{key} is not JSON: publish the features again") from None
    return Pointer.from_json(payload)
