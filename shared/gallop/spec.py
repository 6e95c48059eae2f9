"""The dataset spec: what a user declares about the columns of their data."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gallop.features.plan import FeatureSpecError, check_spec
from gallop.features.spec import Derived

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Task(StrEnum):
    RANKING = "ranking"
    BINARY = "binary"
    REGRESSION = "regression"


class TargetOrder(StrEnum):
    ASCENDING = "ascending"  # lower is better: finishing position
    DESCENDING = "descending"  # higher is better: graded relevance


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Lower-case letters, digits and '-'.")
    task: Task
    target: str = Field(min_length=1)
    group: str | None = Field(default=None, description="Group (race) id column.")
    target_order: TargetOrder | None = None
    time: str | None = Field(default=None, description="Race start (date or timestamp) column.")
    entity: str | None = Field(default=None, description="Runner (horse) id column.")
    features: list[str] | None = Field(
        default=None, description="Numeric feature columns; default: every other numeric column."
    )
    categorical: list[str] = Field(default_factory=list)
    odds: str | None = Field(default=None, description="Decimal odds column.")
    post_race: list[str] = Field(
        default_factory=list,
        description="Numeric columns known only after the race (e.g. final odds, finishing "
        "time); the target is always post-race. Never a feature of its own race.",
    )
    derived: Derived | None = Field(default=None, description="Features computed from history.")

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.task is Task.RANKING:
            if not self.group:
                raise ValueError("task 'ranking' needs 'group' (the race id column)")
            if self.target_order is None:
                raise ValueError(
                    "task 'ranking' needs 'target_order': 'ascending' when lower is better "
                    "(finishing position) or 'descending' (graded relevance)"
                )
        elif self.target_order is not None:
            raise ValueError("'target_order' only applies to task 'ranking'")
        roles = [self.target, self.group, self.time, self.entity, self.odds]
        named = [c for c in roles if c]
        if len(set(named)) != len(named):
            raise ValueError(f"a column has two roles: {named}")
        for listed, what in ((self.features or [], "features"), (self.categorical, "categorical")):
            if len(set(listed)) != len(listed):
                raise ValueError(f"'{what}' names a column twice")
            clash = sorted(set(listed) & {self.target, self.group, self.time, self.entity})
            if clash:
                raise ValueError(f"'{what}' may not include the {clash} column(s)")
        both = sorted(set(self.features or []) & set(self.categorical))
        if both:
            raise ValueError(f"columns {both} are both numeric features and categorical")
        leaking = sorted(
            set(self.post_race)
            & (
                set(self.features or [])
                | set(self.categorical)
                | {self.group, self.time, self.entity}
            )
        )
        if leaking:
            raise ValueError(f"post_race columns {leaking} cannot also be features or keys")
        try:
            check_spec(self)
        except FeatureSpecError as exc:
            raise ValueError(f"derived: {exc}") from None
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a spec from YAML or JSON (JSON is YAML, so one parser serves both)."""
    import yaml  # only to read spec files: the deployed functions never do

    text = Path(path).read_text(encoding="utf-8")
    data: Any = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a spec is a mapping of keys to values")
    return DatasetSpec.model_validate(data)
