"""S3 event notifications as they arrive in SQS message bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str
    size: int | None


def objects_created(body: str) -> list[ObjectCreated]:
    """The ObjectCreated records of one message body.

    S3 sends one `s3:TestEvent` when a notification is configured: it names no object
    and yields nothing. Keys arrive URL-encoded (a space is '+').
    """
    message = json.loads(body)
    if message.get("Event") == "s3:TestEvent":
        return []
    created = []
    for record in message.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        created.append(
            ObjectCreated(
                bucket=s3["bucket"]["name"],
                key=unquote_plus(s3["object"]["key"]),
                size=s3["object"].get("size"),
            )
        )
    return created


def object_created_body(bucket: str, key: str, size: int, region: str = "us-east-1") -> str:
    """An SQS body shaped as S3 writes it, for re-driving an object that was never processed."""
    from urllib.parse import quote_plus

    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventName": "ObjectCreated:Post",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": size},
        },
    }
    return json.dumps({"Records": [record]})
