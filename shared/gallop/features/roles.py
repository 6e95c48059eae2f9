"""What the engine needs to know about a spec's columns, with no heavy imports."""

from __future__ import annotations

from gallop.features.engine import Roles
from gallop.spec import DatasetSpec, TargetOrder, Task


def roles_for(spec: DatasetSpec) -> Roles:
    higher = spec.task is Task.BINARY or spec.target_order is TargetOrder.DESCENDING
    places = spec.derived.places if spec.derived else 3
    return Roles(spec.group, spec.time, spec.target, higher, places, spec.task is Task.BINARY)
