"""A feature set's rows, stored in parts.

A full build stores every row in its own features.parquet. An appended version built
from its parent's snapshot stores only its appended rows there, and its manifest's
`parts` lists the parent's parts then its own: a day's append writes a day's rows, not
the whole history again. Readers take every part and put the rows in one order, the
full build's (by group, time and entity, as canonical data is sorted), so the rows
a model trains on do not depend on how their feature set was built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from gallop.ingest.canonical import read_parts
from gallop.manifests import FeatureManifest


def part_keys(manifest: FeatureManifest | dict[str, Any], data_key: str) -> list[str]:
    """The objects that hold a feature set's rows (a set stored before parts: its one
    data_key)."""
    parts = manifest.get("parts")
    return [str(part["key"]) for part in parts] if parts else [data_key]


def read_rows(
    read: Callable[[str], bytes], manifest: FeatureManifest, data_key: str
) -> pd.DataFrame:
    """Every row of the feature set, in canonical order."""
    return in_canonical_order(read_parts(read, part_keys(manifest, data_key)), manifest)


def in_canonical_order(frame: pd.DataFrame, manifest: FeatureManifest) -> pd.DataFrame:
    """Rows sorted by the identifying columns (group, time, entity), as canonical data.
    Stable: rows that tie (no entity column) belong to one race, so to one part, where
    they already stand in canonical order."""
    by = [c for c in manifest.get("identifiers", []) if c in frame.columns]
    if not by:
        return frame
    return frame.sort_values(by=by, kind="mergesort", na_position="last").reset_index(drop=True)
