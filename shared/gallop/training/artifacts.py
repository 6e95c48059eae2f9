"""A model's artifacts in S3: the stack job's model directory under models/{run_id}/,
each file on its own (for serving and the report link) and all of them as model.tar.gz
(what SageMaker hands over, and what a deployment copies)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path, PurePosixPath

from gallop.layout import TARBALL_FILE, model_prefix
from gallop.storage import Store

CONTENT_TYPES = {
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".gz": "application/gzip",
}


class BadArchive(ValueError):
    pass


def pack(files: dict[str, bytes]) -> bytes:
    """A tar.gz whose bytes depend on the files alone: sorted names, no times, no owners."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar.gz by relative name; a member that would land outside
    the model's prefix (absolute, '..') refuses the whole archive."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise BadArchive(f"archive member {member.name!r} leaves the model's folder")
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file always has content to read
            files[str(name)] = extracted.read()  # pathlib drops a leading "./"
    return files


def read_model_dir(model_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(model_dir).as_posix(): p.read_bytes()
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    }


def publish(store: Store, run_id: str, files: dict[str, bytes], tarball: bytes) -> str:
    """Upload the files and their tarball under models/{run_id}/; returns the prefix. The
    model is not visible to anyone until it is registered."""
    prefix = model_prefix(run_id)
    for name, body in sorted(files.items()):
        store.put_bytes(prefix + name, body, content_type(name))
    store.put_bytes(prefix + TARBALL_FILE, tarball, content_type(TARBALL_FILE))
    return prefix


def publish_model_dir(store: Store, run_id: str, model_dir: Path) -> str:
    """A model directory trained here: uploaded file by file, and packed."""
    files = read_model_dir(model_dir)
    return publish(store, run_id, files, pack(files))


def publish_tarball(store: Store, run_id: str, tarball: bytes) -> str:
    """A model.tar.gz from SageMaker: its files uploaded one by one, and the archive."""
    return publish(store, run_id, unpack(tarball), tarball)


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")
