"""Which model answers which races of a request under a dataset's traffic policy, and which
races the model that did not answer scores in shadow.

A race goes to one model whole: its key is its group id; for an ungrouped task the row's
entity id (the spec's entity column), else the request's correlation id (the request is
one race). The choice is a stable hash of the key (gallop.monitoring.capture.sampled), the
same in every container and on every day, with a salt of its own for the split and for
the shadow, so the challenger's races, the shadowed races and capture's sample are
independent of each other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gallop.monitoring.capture import entity_column, sampled
from gallop.serving.cache import SHADOW, SPLIT, Traffic
from gallop.serving.model import LoadedModel
from gallop.serving.predict import group_ids, id_text

SPLIT_SALT = b"gallop-split"
SHADOW_SALT = b"gallop-shadow"


class Part(NamedTuple):
    """The rows (places in the request, in order) one model scores."""

    champion: bool  # the champion's rows, else the challenger's
    rows: list[int]


class Route(NamedTuple):
    """Who answers which rows, and who scores which in shadow (each list in row order)."""

    answered: list[Part]  # by the first row's model first
    shadowed: list[Part]


def race_keys(
    model: LoadedModel, columns: list[str], values: list[list[Any]], request_id: str
) -> list[str]:
    """Each row's race as text. A bad group id is refused (InputError) as scoring would
    refuse it; rows without their group (or entity) column are keyed by the request, and
    scoring refuses them if the model needs it."""
    where = {name: i for i, name in enumerate(columns)}
    group = model.group
    if group:
        if group not in where:
            return [request_id] * len(values)
        at = where[group]
        keys: list[str] = group_ids([row[at] for row in values]).tolist()
        return keys
    entity = entity_column(model)
    if entity is None or entity not in where:
        return [request_id] * len(values)
    at = where[entity]
    return [request_id if row[at] is None else id_text(row[at]) for row in values]


def chosen(keys: list[str], share: float, salt: bytes) -> np.ndarray:
    """Per row: whether its race is among the `share` the hash salted `salt` picks (each
    race hashed once)."""
    if share <= 0.0:
        return np.zeros(len(keys), dtype=bool)
    picked = {key: sampled(key, share, salt) for key in dict.fromkeys(keys)}
    return np.fromiter(map(picked.__getitem__, keys), dtype=bool, count=len(keys))


def route(policy: Traffic, keys: list[str]) -> Route:
    """The parts of a champion request under `policy` (a request for the challenger or a
    model id is one part, never split nor shadowed: its caller does not route it)."""
    if keys and keys.count(keys[0]) == len(keys):
        return _one_race(policy, keys[0], len(keys))
    return _by_rows(policy, keys)


def _one_race(policy: Traffic, key: str, n: int) -> Route:
    """A request of one race (a race card): one choice for all its rows, without the
    arrays _by_rows builds (they were a third of a split's cost to a 12-runner reply)."""
    rows = list(range(n))
    to_challenger = policy.mode == SPLIT and _picked(key, policy.challenger_share, SPLIT_SALT)
    answered = [Part(not to_challenger, rows)]
    if policy.mode not in (SHADOW, SPLIT) or not _picked(key, policy.shadow_share, SHADOW_SALT):
        return Route(answered, [])
    return Route(answered, [Part(to_challenger, rows)])


def _picked(key: str, share: float, salt: bytes) -> bool:
    return share > 0.0 and sampled(key, share, salt)


def _by_rows(policy: Traffic, keys: list[str]) -> Route:
    n = len(keys)
    if policy.mode == SPLIT:
        challenger = chosen(keys, policy.challenger_share, SPLIT_SALT)
    else:
        challenger = np.zeros(n, dtype=bool)
    answered = _parts(challenger, np.ones(n, dtype=bool))
    if policy.mode not in (SHADOW, SPLIT):
        return Route(answered, [])
    shadow = chosen(keys, policy.shadow_share, SHADOW_SALT)
    # the other model of each shadowed race: the challenger where the champion answered
    return Route(answered, [Part(not p.champion, p.rows) for p in _parts(challenger, shadow)])


def _parts(challenger: np.ndarray, taken: np.ndarray) -> list[Part]:
    """The taken rows in two parts by who answers them, the first row's first."""
    parts = [
        Part(champion, np.flatnonzero(taken & (challenger != champion)).tolist())
        for champion in (True, False)
    ]
    parts = [p for p in parts if p.rows]
    return sorted(parts, key=lambda p: p.rows[0])
