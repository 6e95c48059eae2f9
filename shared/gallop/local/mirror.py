"""Keep the local S3 buckets on disk, so local state survives a restart, or a crash.

moto holds objects in memory. The local S3's front (gallop.local.s3_front) hands each
object a request wrote or deleted to `keep`, which makes it durable under
<state_dir>/s3/<bucket>/<key> (fsync, then an atomic rename) before the request is
answered; `restore` puts every object back into moto when the local stack starts again.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from moto.s3.models import s3_backends

log = logging.getLogger(__name__)

STAGING = ".staging"  # a file is written here, then renamed into place (same filesystem)


class S3Mirror:
    def __init__(self, buckets: list[str], root: Path) -> None:
        self.buckets = buckets
        self.root = root

    def restore(self) -> int:
        """Put every kept object back into its (empty, new) bucket, straight into moto's
        backend: nothing is written back to disk, and no upload notification is sent."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)  # a crash's half-written files
        count = 0
        for bucket in self.buckets:
            base = self.root / bucket
            if not base.is_dir():
                continue
            backend = _backend_of(bucket)
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                backend.put_object(bucket, path.relative_to(base).as_posix(), path.read_bytes())
                count += 1
        return count

    def keeps(self, bucket: str) -> bool:
        return bucket in self.buckets

    def keep(self, bucket: str, key: str) -> None:
        """Make the disk hold what moto holds now under bucket/key: the object, or nothing."""
        path = self._path(bucket, key)
        if path is None:
            return
        found = _backend_of(bucket).get_object(bucket, key)
        if found is None:
            if path.is_file():
                path.unlink()
                _fsync_dir(path.parent)
        else:
            self._write(path, found.value)

    def _write(self, path: Path, body: bytes) -> None:
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        part = staging / uuid.uuid4().hex
        with open(part, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        _make_dirs(path.parent)
        os.replace(part, path)
        _fsync_dir(path.parent)

    def _path(self, bucket: str, key: str) -> Path | None:
        """Where a key lives on disk; None for a key that would land outside the mirror
        (a leading '/', '..'), on a folder or on the staging area: such a key stays in
        moto's memory only, and is logged."""
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in key:
            log.warning("not mirroring S3 key %r of %s: it is no path on disk", key, bucket)
            return None
        return self.root / bucket / key


def _backend_of(bucket: str) -> Any:
    """moto's S3 backend that holds the bucket (whichever account created it)."""
    partition, account = s3_backends.bucket_accounts[bucket]
    return s3_backends[account][partition]


def _make_dirs(folder: Path) -> None:
    """Create missing folders, each made durable in its parent."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        _fsync_dir(made.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
