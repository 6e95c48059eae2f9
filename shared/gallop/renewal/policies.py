"""A dataset's traffic policy (how its champion's requests are shared with its
challenger) and retraining policy (when it is retrained): checked, stored, read.

A traffic policy changes in the transaction that writes the dataset's serving object again
(gallop.serving.registry), so the predict path sees it with the aliases it goes with. A
retraining policy is only stored here; gallop.renewal's triggers act on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from gallop.metadata.db import session_scope
from gallop.metadata.models import (
    RetrainingPolicy,
    TrafficMode,
    TrafficPolicy,
    utcnow,
)
from gallop.serving import registry
from gallop.storage import Store

SHARES_TOLERANCE = 1e-9


class BadPolicy(ValueError):
    """A policy that cannot be stored: `field` names what is wrong (a 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Traffic:
    mode: str
    challenger_share: float
    shadow_share: float


def checked_traffic(
    mode: str,
    challenger_share: float | None = None,
    shadow_share: float | None = None,
    shares: dict[str, float] | None = None,
) -> Traffic:
    """The policy asked for, or BadPolicy saying what is wrong with it. `shares`
    ({"champion": .95, "challenger": .05}) is another way to give challenger_share."""
    modes = [m.value for m in TrafficMode]
    if mode not in modes:
        raise BadPolicy("mode", f"mode must be one of {', '.join(modes)}, not {mode!r}")
    if shares is not None:
        if challenger_share is not None:
            raise BadPolicy("shares", "give shares or challenger_share, not both")
        challenger_share = _from_shares(shares)
    challenger = 0.0 if challenger_share is None else float(challenger_share)
    # shadow: every request by default (the share is for when that costs too much)
    default_shadow = 1.0 if mode == TrafficMode.SHADOW else 0.0
    shadow = default_shadow if shadow_share is None else float(shadow_share)
    if not 0 <= shadow <= 1:
        raise BadPolicy("shadow_share", f"shadow_share must be from 0 to 1, not {shadow:g}")
    if mode == TrafficMode.SPLIT and not 0 < challenger < 1:
        raise BadPolicy(
            "challenger_share",
            f"a split gives the challenger a share between 0 and 1 (exclusive), not {challenger:g}",
        )
    if mode != TrafficMode.SPLIT and challenger != 0:
        raise BadPolicy("challenger_share", f"mode {mode} answers no request by the challenger")
    if mode == TrafficMode.SHADOW and shadow == 0:
        raise BadPolicy("shadow_share", "a shadow policy with shadow_share 0 shadows nothing")
    if mode == TrafficMode.CHAMPION and shadow != 0:
        raise BadPolicy("shadow_share", "mode champion shadows nothing: use mode shadow")
    return Traffic(str(mode), challenger, shadow)


def _from_shares(shares: dict[str, float]) -> float:
    if set(shares) != {"champion", "challenger"}:
        raise BadPolicy("shares", "shares names champion and challenger, and nothing else")
    values = {alias: float(share) for alias, share in shares.items()}
    for alias, share in values.items():
        if not 0 <= share <= 1:
            raise BadPolicy("shares", f"the {alias}'s share must be from 0 to 1, not {share:g}")
    total = math.fsum(values.values())
    if abs(total - 1) > SHARES_TOLERANCE:
        raise BadPolicy("shares", f"shares add up to {total:g}, not 1")
    return values["challenger"]


def put_traffic(
    engine: Engine, artifacts: Store, dataset_id: int, traffic: Traffic, *, actor: str
) -> TrafficPolicy:
    """Store the dataset's traffic policy and write its serving object, in one
    transaction: if the object cannot be written, the policy is not changed."""
    with session_scope(engine) as session:
        registry.locked_dataset(session, dataset_id)  # two first policies take turns
        policy = session.get(TrafficPolicy, dataset_id)
        if policy is None:
            policy = TrafficPolicy(dataset_id=dataset_id)
            session.add(policy)
        policy.mode = traffic.mode
        policy.challenger_share = traffic.challenger_share
        policy.shadow_share = traffic.shadow_share
        policy.updated_by = actor
        policy.updated_at = utcnow()
        registry.publish_serving(engine, artifacts, dataset_id, session)
    return policy


def traffic_of(engine: Engine, dataset_id: int) -> TrafficPolicy | None:
    with session_scope(engine) as session:
        return session.get(TrafficPolicy, dataset_id)


def describe_traffic(policy: TrafficPolicy | None) -> dict[str, Any]:
    """The policy as the API says it (no row: the champion answers every request)."""
    if policy is None:
        return {**registry.NO_POLICY, "updated_by": None, "updated_at": None}
    return {
        "mode": policy.mode,
        "challenger_share": policy.challenger_share,
        "shadow_share": policy.shadow_share,
        "updated_by": policy.updated_by,
        "updated_at": policy.updated_at,
    }


# -- retraining ----------------------------------------------------------------------------

RETRAINING_FIELDS = ("every_hours", "after_rows", "on_alarm", "time_limit", "auto_promote")


@dataclass(frozen=True)
class Retraining:
    every_hours: float | None = None
    after_rows: int | None = None
    on_alarm: bool = False
    time_limit: int | None = None
    auto_promote: bool = False


def checked_retraining(retraining: Retraining, max_time_limit: float | None) -> Retraining:
    """The policy asked for, or BadPolicy. A policy with no trigger retrains never (off)."""
    if retraining.every_hours is not None and not retraining.every_hours > 0:
        raise BadPolicy("every_hours", f"every_hours must be > 0, not {retraining.every_hours:g}")
    if retraining.after_rows is not None and retraining.after_rows < 1:
        raise BadPolicy("after_rows", f"after_rows must be >= 1, not {retraining.after_rows}")
    limit = retraining.time_limit
    if limit is not None and (limit < 1 or (max_time_limit is not None and limit > max_time_limit)):
        most = f" to {max_time_limit:g}" if max_time_limit is not None else " or more"
        raise BadPolicy("time_limit", f"time_limit must be seconds from 1{most}, not {limit}")
    return retraining


def put_retraining(
    engine: Engine, dataset_id: int, retraining: Retraining, *, actor: str
) -> RetrainingPolicy:
    """Store the dataset's retraining policy; what it last did (last_*) is kept."""
    with session_scope(engine) as session:
        registry.locked_dataset(session, dataset_id)  # two first policies take turns
        policy = session.get(RetrainingPolicy, dataset_id)
        if policy is None:
            policy = RetrainingPolicy(dataset_id=dataset_id, alarm_seen=False)
            session.add(policy)
        for name in RETRAINING_FIELDS:
            setattr(policy, name, getattr(retraining, name))
        policy.updated_by = actor
        policy.updated_at = utcnow()
    return policy


def retraining_of(engine: Engine, dataset_id: int) -> RetrainingPolicy | None:
    with session_scope(engine) as session:
        return session.get(RetrainingPolicy, dataset_id)
