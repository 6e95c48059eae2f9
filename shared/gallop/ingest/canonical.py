"""The canonical form's identity (content hash) and its bytes (Parquet)."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gallop.spec import DatasetSpec


def content_hash(frame: pd.DataFrame, spec: DatasetSpec) -> str:
    """Hash of the canonical data: same rows under the same spec, same hash.

    Row order does not matter (canonical rows are sorted), the file format does not
    matter (CSV and Parquet of the same table agree), and the spec is part of it
    because it decides the types.
    """
    digest = hashlib.sha256()
    digest.update(spec.canonical_json().encode())
    for name in frame.columns:
        digest.update(f"{name}:{frame[name].dtype}".encode())
    row_hashes = pd.util.hash_pandas_object(frame, index=False)
    digest.update(row_hashes.to_numpy().tobytes())
    return digest.hexdigest()


def rejected_hash(data: bytes, spec: DatasetSpec) -> str:
    """A rejected file has no canonical form; its identity is its bytes under the spec."""
    digest = hashlib.sha256()
    digest.update(spec.canonical_json().encode())
    digest.update(data)
    return digest.hexdigest()


def version_id_for(digest: str, valid: bool) -> str:
    return ("v-" if valid else "r-") + digest[:16]


def to_parquet(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
