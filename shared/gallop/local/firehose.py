"""moto's Firehose, made to deliver as AWS does with dynamic partitioning, for the local
stack's capture stream.

moto writes every batch to `prefix + YYYY/MM/DD/HH/ + name` and ignores dynamic
partitioning. With it enabled, AWS evaluates the stream's metadata-extraction query (JQ)
on each record and fills the prefix's `!{partitionKeyFromQuery:NAME}` with the keys and
`!{timestamp:yyyy-MM-dd}` with the record's arrival time (UTC), writes one object per
partition under it named `{stream}-{version}-{yyyy-MM-dd-HH-mm-ss}-{uuid}`, and sends a
record whose keys cannot be read to the error prefix (`!{firehose:error-output-type}`
being `partitioning-failed`). `install` makes moto's backend do the same for the query
shape gallop uses (`{name: .field, ...}`, gallop.layout.CAPTURE_PARTITION_QUERY), and
hands each object written to the disk mirror: moto's Firehose writes to its S3 backend
in-process, past the local S3's front that otherwise keeps objects on disk.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from moto.firehose.models import FirehoseBackend
from moto.s3.models import s3_backends

log = logging.getLogger(__name__)

PARTITIONING_FAILED = "partitioning-failed"
_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_KEY = re.compile(r"!\{partitionKeyFromQuery:([A-Za-z0-9_]+)\}")
_TIMESTAMP = re.compile(r"!\{timestamp:([^}]+)\}")
_JAVA_TIME = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}

_moto_put_s3_records = FirehoseBackend.put_s3_records


class UnsupportedQuery(ValueError):
    """A metadata-extraction query other than `{name: .field, ...}`."""


def parse_query(query: str) -> dict[str, str]:
    """{partition key: record field} of a JQ query `{name: .field, ...}`."""
    body = query.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise UnsupportedQuery(
            f"the local Firehose reads queries {{name: .field, ...}}, not {query!r}"
        )
    found = {}
    for part in body[1:-1].split(","):
        match = _FIELD.fullmatch(part)
        if not match:
            raise UnsupportedQuery(f"the local Firehose cannot read {part.strip()!r} of {query!r}")
        found[match.group(1)] = match.group(2)
    return found


def partition_keys(data: bytes, fields: dict[str, str]) -> dict[str, str] | None:
    """The record's partition keys, or None when they cannot be read (as AWS: not JSON,
    a field missing or null, or not a scalar)."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    keys = {}
    for name, source in fields.items():
        value = record.get(source)
        if value is None or isinstance(value, dict | list):
            return None
        keys[name] = value if isinstance(value, str) else json.dumps(value)
    return keys


def fill_prefix(prefix: str, keys: dict[str, str], arrived: datetime, error_type: str = "") -> str:
    """A prefix's expressions filled in: partition keys, arrival timestamp, error type."""
    filled = _KEY.sub(lambda m: keys[m.group(1)], prefix)
    filled = _TIMESTAMP.sub(lambda m: arrived.strftime(_strftime(m.group(1))), filled)
    return filled.replace("!{firehose:error-output-type}", error_type)


def _strftime(java: str) -> str:
    return re.sub("yyyy|MM|dd|HH|mm|ss", lambda m: _JAVA_TIME[m.group(0)], java)


def _query_of(destination: dict[str, Any]) -> str | None:
    processing = destination.get("ProcessingConfiguration") or {}
    for processor in processing.get("Processors") or []:
        if processor.get("Type") != "MetadataExtraction":
            continue
        for parameter in processor.get("Parameters") or []:
            if parameter.get("ParameterName") == "MetadataExtractionQuery":
                return str(parameter["ParameterValue"])
    return None


def install(keep: Callable[[str, str], None] | None = None) -> None:
    """Make moto's Firehose honour dynamic partitioning (process-wide, as moto's backends
    are); `keep(bucket, key)` is called for each object it writes (the disk mirror)."""

    def put_s3_records(
        self: FirehoseBackend,
        delivery_stream_name: str,
        version_id: str,
        s3_destination: dict[str, Any],
        records: list[dict[str, bytes]],
    ) -> list[dict[str, str]]:
        dynamic = (s3_destination.get("DynamicPartitioningConfiguration") or {}).get("Enabled")
        query = _query_of(s3_destination)
        if not dynamic or query is None:
            return _moto_put_s3_records(
                self, delivery_stream_name, version_id, s3_destination, records
            )
        fields = parse_query(query)
        arrived = datetime.now(UTC)
        stamp = arrived.strftime("%Y-%m-%d-%H-%M-%S")
        objects: dict[str, list[bytes]] = {}
        for record in records:
            keys = partition_keys(record["Data"], fields)
            if keys is None:
                error_prefix = s3_destination.get("ErrorOutputPrefix") or ""
                prefix = fill_prefix(error_prefix, {}, arrived, PARTITIONING_FAILED)
            else:
                prefix = fill_prefix(s3_destination.get("Prefix") or "", keys, arrived)
            objects.setdefault(prefix, []).append(record["Data"])
        bucket = s3_destination["BucketARN"].split(":")[-1]
        backend = s3_backends[self.account_id][self.partition]
        for prefix, parts in objects.items():
            key = f"{prefix}{delivery_stream_name}-{version_id}-{stamp}-{uuid.uuid4()}"
            backend.put_object(bucket, key, b"".join(parts))
            if keep is not None:
                keep(bucket, key)
        return [{"RecordId": str(uuid.uuid4())} for _ in records]

    FirehoseBackend.put_s3_records = put_s3_records  # type: ignore[method-assign]


def uninstall() -> None:
    FirehoseBackend.put_s3_records = _moto_put_s3_records  # type: ignore[method-assign]
