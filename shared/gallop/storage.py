"""Object storage on S3: the only module that makes boto3's S3 calls (where things are
in the buckets is gallop.layout's)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from gallop import aws
from gallop.settings import Settings, get_settings


class ObjectMissing(LookupError):
    pass


def object_id(*identity: str) -> str:
    """A short id for what `identity` names (an object's key, and its ETag for one set of
    its bytes): ids of different keys or bytes differ, and no API upload id looks alike."""
    return "k-" + hashlib.sha256("\n".join(identity).encode()).hexdigest()[:32]


class Store:
    """A bucket, seen through the few operations gallop needs."""

    def __init__(self, bucket: str, s3_client: Any | None = None) -> None:
        self.bucket = bucket
        self._s3 = s3_client

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Store:
        settings = settings or get_settings()
        return cls(settings.data_bucket, aws.client("s3", settings))

    @classmethod
    def artifacts_from_settings(cls, settings: Settings | None = None) -> Store:
        settings = settings or get_settings()
        return cls(settings.artifacts_bucket, aws.client("s3", settings))

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3")
        return self._s3

    def head(self, key: str) -> tuple[int, str]:
        """(size in bytes, ETag) of an object."""
        try:
            reply = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(key) from exc
            raise
        return int(reply["ContentLength"]), str(reply["ETag"]).strip('"')

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
                raise ObjectMissing(key) from exc
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_json(self, key: str, payload: Any) -> None:
        body = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        self.put_bytes(key, body, "application/json")

    def copy(self, source_key: str, dest_key: str) -> None:
        try:
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=dest_key,
                CopySource={"Bucket": self.bucket, "Key": source_key},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
                raise ObjectMissing(source_key) from exc
            raise

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def list_folders(self, prefix: str) -> list[str]:
        """The "folders" right under `prefix` (each ends with "/"), not their contents."""
        folders: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return folders

    def presigned_get(self, key: str, expires_in: int) -> str:
        """A link that reads one object, for a browser (e.g. a training report)."""
        return self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def presigned_post(self, key: str, max_bytes: int, expires_in: int) -> dict[str, Any]:
        """A browser/curl-friendly upload form limited to one key and a size range."""
        return self.s3.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Conditions=[["content-length-range", 1, max_bytes]],
            ExpiresIn=expires_in,
        )
