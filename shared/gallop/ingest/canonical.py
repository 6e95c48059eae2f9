"""The canonical form's identity (content hash) and its bytes (Parquet)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gallop.spec import DatasetSpec


def hash_rows(frame: pd.DataFrame) -> np.ndarray:
    """One uint64 per row, of its values (and their types), in the rows' order."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """The rows' hashes sorted: the rows as a set, which an append extends without reading
    the rows already stored."""
    return np.sort(hash_rows(frame))


def content_hash(frame: pd.DataFrame, spec: DatasetSpec) -> str:
    """Hash of the canonical data: same rows under the same spec, same hash."""
    return hash_of_rows(spec, frame.dtypes.items(), row_hashes(frame))


def hash_of_rows(spec: DatasetSpec, dtypes: object, sorted_hashes: np.ndarray) -> str:
    """The content hash from the columns' types and the sorted row hashes.

    Row order does not matter (the hashes are sorted), so a version made by appends has the
    id a one-file upload of the same rows has; the file format does not matter (CSV and
    Parquet of the same table agree), and the spec is part of it because it decides the
    types.
    """
    digest = hashlib.sha256()
    digest.update(spec.canonical_json().encode())
    for name, dtype in dtypes:  # type: ignore[attr-defined]
        digest.update(f"{name}:{dtype}".encode())
    digest.update(np.ascontiguousarray(sorted_hashes, dtype=np.uint64).tobytes())
    return digest.hexdigest()


def sort_canonical(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Rows in the canonical order: by group, time and entity, then every other column.
    The index keeps each row's position before the sort."""
    keys = [c for c in (spec.group, spec.time, spec.entity) if c]
    by = keys + [c for c in frame.columns if c not in keys]
    return frame.sort_values(by=by, kind="mergesort", na_position="last")


def read_canonical(
    read: Callable[[str], bytes], parts: list[str], spec: DatasetSpec
) -> pd.DataFrame:
    """A version's whole data from its parts (a whole upload is one; an append adds its own
    rows as one more), in the canonical order a one-file upload of the same rows has."""
    if len(parts) == 1:
        return read_parts(read, parts)
    return sort_canonical(read_parts(read, parts), spec).reset_index(drop=True)


def read_parts(read: Callable[[str], bytes], keys: list[str]) -> pd.DataFrame:
    """Parquet objects as one table, in the order given (a dataset version's or a feature
    set's parts)."""
    frames = [pd.read_parquet(io.BytesIO(read(key))) for key in keys]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def index_to_bytes(hashes: np.ndarray, groups: np.ndarray | None) -> bytes:
    """A version's row index: its sorted row hashes and its sorted group ids, which is all
    an append needs to know of the rows already stored (numpy, no pickle)."""
    sink = io.BytesIO()
    arrays = {"hashes": np.ascontiguousarray(hashes, dtype=np.uint64)}
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=str)
    np.savez(sink, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds vs allow_pickle
    return sink.getvalue()


def index_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        groups = arrays["groups"] if "groups" in arrays.files else None
        return arrays["hashes"], groups


def group_index(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray | None:
    """The sorted distinct group ids of canonical rows (None for an ungrouped dataset)."""
    if not spec.group:
        return None
    return np.unique(frame[spec.group].to_numpy(dtype=str))


def rejected_hash(data: bytes, spec: DatasetSpec, upload_key: str) -> str:
    """A rejected file has no canonical form; its identity is its bytes under the spec, as
    one upload (its key names the upload and the declared format): the same bytes sent
    twice, or declared as two formats, are two rejections, each with its own report."""
    digest = hashlib.sha256()
    digest.update(spec.canonical_json().encode())
    digest.update(upload_key.encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


def version_id_for(digest: str, valid: bool) -> str:
    return ("v-" if valid else "r-") + digest[:16]


def to_parquet(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
