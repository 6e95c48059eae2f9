"""Object storage on S3: the only module that knows bucket layout and boto3's S3 calls."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from gallop import aws
from gallop.settings import (
    CURATED_PREFIX,
    FEATURES_PREFIX,
    MODELS_PREFIX,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    TRAINING_PREFIX,
    Settings,
    get_settings,
)


class ObjectMissing(LookupError):
    pass


class NotAnUploadKey(ValueError):
    pass


UPLOAD_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class RawKey:
    """An object under raw/: `raw/{dataset}/{upload_id}/{file}` when it came through the API.

    Objects copied in by hand may sit deeper or shallower (raw/races/2024/05/x.csv); they
    get an upload id derived from their key, so each key is one upload.
    """

    dataset: str
    upload_id: str
    filename: str
    key: str

    @classmethod
    def for_upload(cls, dataset: str, upload_id: str, filename: str) -> RawKey:
        return cls(dataset, upload_id, filename, f"{RAW_PREFIX}{dataset}/{upload_id}/{filename}")

    @classmethod
    def parse(cls, key: str) -> RawKey:
        parts = key.removeprefix(RAW_PREFIX).split("/") if key.startswith(RAW_PREFIX) else []
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            raise NotAnUploadKey(f"{key!r} is not raw/{{dataset}}/[{{folder}}/]{{file}}")
        middle = "/".join(parts[1:-1])
        if not UPLOAD_ID.match(middle):
            middle = "k-" + hashlib.sha256(key.encode()).hexdigest()[:24]
        return cls(parts[0], middle, parts[-1], key)


def curated_prefix(dataset: str, version_id: str) -> str:
    return f"{CURATED_PREFIX}{dataset}/{version_id}/"


def features_prefix(dataset: str, version_id: str, spec_hash: str) -> str:
    return f"{FEATURES_PREFIX}{dataset}/{version_id}/{spec_hash}/"


def training_prefix(run_id: str) -> str:
    """A run's working objects: its data channels, and its SageMaker jobs' output."""
    return f"{TRAINING_PREFIX}{run_id}/"


def model_prefix(run_id: str) -> str:
    return f"{MODELS_PREFIX}{run_id}/"


def quarantine_prefix(dataset: str, upload_id: str) -> str:
    return f"{QUARANTINE_PREFIX}{dataset}/{upload_id}/"


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
        self.s3.copy_object(
            Bucket=self.bucket, Key=dest_key, CopySource={"Bucket": self.bucket, "Key": source_key}
        )

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

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
