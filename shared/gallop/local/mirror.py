"""Keep the local S3 buckets on disk, so local state survives a restart.

moto holds objects in memory; this mirror writes each bucket's objects under
<state_dir>/s3/<bucket>/<key> (atomically, as objects change) and puts them back
when the local stack starts again.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class S3Mirror:
    def __init__(self, s3: Any, buckets: list[str], root: Path, interval: float = 1.0) -> None:
        self.s3 = s3
        self.buckets = buckets
        self.root = root
        self.interval = interval
        self._etags: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="s3-mirror", daemon=True)

    def restore(self) -> int:
        """Upload every mirrored object back into its (empty, new) bucket."""
        count = 0
        for bucket in self.buckets:
            base = self.root / bucket
            if not base.is_dir():
                continue
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                if path.name.endswith(".part"):
                    continue
                key = path.relative_to(base).as_posix()
                reply = self.s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                self._etags[(bucket, key)] = reply["ETag"]
                count += 1
        return count

    def sync(self) -> None:
        with self._lock:
            for bucket in self.buckets:
                self._sync_bucket(bucket)

    def _sync_bucket(self, bucket: str) -> None:
        current: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                current[obj["Key"]] = obj["ETag"]
        for key, etag in current.items():
            if self._etags.get((bucket, key)) != etag:
                try:
                    body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                except self.s3.exceptions.NoSuchKey:
                    current[key] = ""  # deleted since the listing; gone on disk below
                    continue
                self._etags[(bucket, key)] = etag
                path = self._path(bucket, key)
                if path is not None:
                    _write_atomically(path, body)
        gone = [k for k in self._etags if k[0] == bucket and not current.get(k[1])]
        for gone_bucket, key in gone:
            path = self._path(gone_bucket, key)
            if path is not None:
                path.unlink(missing_ok=True)
            del self._etags[(gone_bucket, key)]

    def _path(self, bucket: str, key: str) -> Path | None:
        """Where a key lives on disk; None for a key that would land outside the mirror
        (a leading '/', '..') or on a folder, which is left in S3 and logged."""
        base = (self.root / bucket).resolve()
        path = (base / key).resolve()
        if not path.is_relative_to(base) or path == base or key.endswith("/"):
            log.warning(
                "not mirroring S3 key %r of %s: it would leave the state directory", key, bucket
            )
            return None
        return path

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.sync()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception:  # a failed sync is retried on the next tick
                log.exception("mirroring S3 to %s failed", self.root)


def _write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_bytes(body)
    os.replace(part, path)
