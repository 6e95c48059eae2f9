"""Appends: a version that is the newest VALID version plus an upload's rows.

The upload is validated as any upload is, then against what is stored: the same columns
with the same types, no row that repeats a stored one, and no race (group) that is
already stored, unless the upload says it carries corrections, when its races replace
the stored races of the same ids. An append whose every row is stored already (the same
append sent twice) changes nothing: it is the version it repeats. What is stored is known
from the parent's row index (sorted row hashes and group ids), so an append reads no
stored rows unless it replaces some.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gallop.ingest.canonical import (
    group_index,
    hash_rows,
    read_canonical,
    row_hashes,
    sort_canonical,
)
from gallop.ingest.problems import Problem, at_rows, some_names
from gallop.ingest.validate import Validation
from gallop.spec import DatasetSpec


@dataclass(frozen=True)
class Parent:
    """What an append needs to know of the version it extends."""

    version_id: str
    parts: list[str]
    columns: dict[str, str]  # canonical column -> dtype, in the canonical order
    features: list[str]
    hashes: np.ndarray  # sorted row hashes
    groups: np.ndarray | None  # sorted distinct group ids


@dataclass
class Appended:
    added: pd.DataFrame  # the upload's rows, canonical, in the parent's column order
    hashes: np.ndarray  # the whole's sorted row hashes
    groups: np.ndarray | None  # the whole's sorted group ids
    replaced_groups: list[str] = field(default_factory=list)
    rows_replaced: int = 0
    whole: pd.DataFrame | None = None  # only when corrections replaced stored rows
    unchanged: bool = False  # every row was stored already: the parent is the whole


def column_problems(columns: list[str], parent: Parent) -> list[Problem]:
    """The upload must hold the dataset's columns, no more and no fewer (order is free)."""
    stored = list(parent.columns)
    missing = [c for c in stored if c not in set(columns)]
    extra = [c for c in columns if c not in parent.columns]
    if not missing and not extra:
        return []
    parts = [
        f"lacks {some_names(missing)}" if missing else "",
        f"adds {some_names(extra)}" if extra else "",
    ]
    return [
        Problem(
            "columns_differ",
            f"an append must have the columns of version {parent.version_id}: this file "
            + " and ".join(p for p in parts if p),
            column=(missing or extra)[0],
        )
    ]


def type_problems(canonical: pd.DataFrame, parent: Parent) -> list[Problem]:
    """A column read as another type than the stored one (numbers where text was)."""
    return [
        Problem(
            "columns_differ",
            f"column {name!r} reads as {canonical[name].dtype}; version {parent.version_id} "
            f"stores it as {dtype}",
            column=name,
        )
        for name, dtype in parent.columns.items()
        if str(canonical[name].dtype) != dtype
    ]


def extend(
    parent: Parent,
    validation: Validation,
    spec: DatasetSpec,
    corrections: bool,
    read: Callable[[str], bytes],
    limit: int = 20,
) -> Appended | list[Problem]:
    """The appended whole, or what stops it (rows named as the upload numbers them)."""
    assert validation.canonical is not None
    added = validation.canonical[list(parent.columns)]
    mine = hash_rows(added)
    repeated = _in_sorted(parent.hashes, mine)
    group = spec.group
    resent = np.zeros(len(added), dtype=bool)
    if group and parent.groups is not None:
        resent = _in_sorted(parent.groups, added[group].to_numpy(dtype=str))
    if len(added) and repeated.all():
        # The same append again (a retry, a second copy): every row is stored already, so
        # the whole is the parent, and the upload is that version, unchanged.
        return Appended(added.iloc[:0], parent.hashes, parent.groups, unchanged=True)
    if corrections and resent.any():
        return _with_replacements(parent, added, spec, read, resent)
    # A row repeated is in a stored race (its race id is one of its values): without
    # corrections both are refused; corrections re-send races, not rows of no race.
    in_upload = _in_upload_order(added, group, validation) if group else None
    problems = []
    if repeated.any():
        problems.append(
            at_rows(
                "duplicate_stored_row",
                f"rows repeat rows version {parent.version_id} already holds",
                validation.upload_mask(repeated),
                column=group,
                values=in_upload,
                limit=limit,
            )
        )
    changed = resent & ~repeated
    if changed.any():
        problems.append(
            at_rows(
                "group_already_stored",
                f"{group!r} values already stored in version {parent.version_id} are sent "
                "again with other rows; to replace those races (a stewards' correction, a "
                "disqualification) send them as corrections",
                validation.upload_mask(changed),
                column=group,
                values=in_upload,
                limit=limit,
            )
        )
    return problems or _added_only(parent, added, mine, spec)


def _in_sorted(stored: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which values a sorted array holds: one binary search each, not a sort of both."""
    if not len(stored):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(stored, values), len(stored) - 1)
    return np.asarray(stored[at] == values)


def _in_upload_order(added: pd.DataFrame, group: str | None, validation: Validation) -> np.ndarray:
    """The group ids of the upload's rows, as the upload orders them (at_rows quotes them)."""
    assert group and validation.source_rows is not None
    values = np.empty(len(added), dtype=object)
    values[validation.source_rows] = added[group].to_numpy(dtype=object)
    return values


def _added_only(
    parent: Parent, added: pd.DataFrame, mine: np.ndarray, spec: DatasetSpec
) -> Appended:
    hashes = np.sort(np.concatenate([parent.hashes, mine]))
    mine_groups = group_index(added, spec)
    groups = None
    if mine_groups is not None and parent.groups is not None:
        groups = np.union1d(parent.groups, mine_groups)
    return Appended(added.reset_index(drop=True), hashes, groups)


def _with_replacements(
    parent: Parent,
    added: pd.DataFrame,
    spec: DatasetSpec,
    read: Callable[[str], bytes],
    resent: np.ndarray,
) -> Appended:
    """Corrections: the stored rows of the re-sent races go, the upload's take their place.
    The whole is written again (rare: the parts of the parent cannot lose rows)."""
    assert spec.group
    replaced = sorted(set(added[spec.group].to_numpy(dtype=str)[resent].tolist()))
    stored = read_canonical(read, parent.parts, spec)
    gone = stored[spec.group].isin(replaced).to_numpy()
    whole = pd.concat([stored[~gone], added], ignore_index=True)
    whole = sort_canonical(whole, spec).reset_index(drop=True)
    return Appended(
        added.reset_index(drop=True),
        row_hashes(whole),
        group_index(whole, spec),
        replaced_groups=replaced,
        rows_replaced=int(gone.sum()),
        whole=whole,
    )
