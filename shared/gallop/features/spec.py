"""The `derived` section of a dataset spec: features declared, not coded.

Every entry has a stable output name. Entity-history entries (rolling, career,
since_last) see only rows of strictly earlier times; row and race entries
(interactions, relative, field_size) see only the row and its own race. A column
known only after the race (the target and any `post_race` column) may feed history
entries, never a row's own features: whatever is computed from it within the race
is marked post-race too and is not offered to models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

RollingStat = Literal["mean", "min", "max", "count", "last"]
CareerStat = Literal["runs", "wins", "win_rate", "place_rate"]
RelativeKind = Literal["rank", "zscore", "diff_mean", "diff_best", "log_implied"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_WINDOW = 1000


def key_list(by: str | list[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def key_name(by: str | list[str]) -> str:
    """horse_id -> horse; [jockey_id, trainer_id] -> jockey_x_trainer."""
    return "_x_".join(k.removesuffix("_id") for k in key_list(by))


Keys = str | Annotated[list[str], Field(min_length=1)]


def _distinct(by: str | list[str]) -> str | list[str]:
    keys = key_list(by)
    if len(set(keys)) != len(keys):
        raise ValueError(f"'by' names a column twice: {keys}")
    return by


class Rolling(_Entry):
    """Statistics of a numeric column over the entity's previous N rows."""

    by: Keys
    column: str
    windows: list[int] = Field(min_length=1)
    stats: list[RollingStat] = Field(default=["mean"], min_length=1)  # pydantic copies it

    _by = field_validator("by")(_distinct)

    @field_validator("windows")
    @classmethod
    def _positive(cls, windows: list[int]) -> list[int]:
        bad = [w for w in windows if not 1 <= w <= MAX_WINDOW]
        if bad:
            raise ValueError(f"windows must be 1 to {MAX_WINDOW} rows, got {bad}")
        return windows

    def outputs(self) -> list[str]:
        base = f"{key_name(self.by)}_{self.column}"
        return [f"{base}_{stat}_{w}" for w in self.windows for stat in self.stats]


class Career(_Entry):
    """Counts to date per key; rates are shrunk towards a prior so that a newcomer is
    neither 0% nor 100%: (wins + prior_runs * prior_rate) / (runs + prior_runs)."""

    by: Keys
    stats: list[CareerStat] = Field(default=["runs", "wins", "win_rate", "place_rate"])
    prior_runs: float = Field(default=5.0, gt=0)
    _by = field_validator("by")(_distinct)
    prior_rate: float = Field(default=0.1, gt=0, lt=1)

    def outputs(self) -> list[str]:
        return [f"{key_name(self.by)}_{stat}" for stat in self.stats]


class SinceLast(_Entry):
    by: str
    unit: Literal["days", "hours"] = "days"

    def outputs(self) -> list[str]:
        return [f"{key_name(self.by)}_{self.unit}_since_last"]


class Relative(_Entry):
    """The row against the rest of its race: rank (1 = best), z-score, difference from
    the race mean or from the race's best value, or for decimal odds the log of the
    implied chance, 1/x normalised over the race (the market's view, on the scale a
    linear model of the chance of winning wants)."""

    column: str
    kinds: list[RelativeKind] = Field(min_length=1)
    higher_is_better: bool = False

    def outputs(self) -> list[str]:
        return [f"{self.column}_{kind}" for kind in self.kinds]


class Interaction(_Entry):
    kind: Literal["ratio", "difference", "product"]
    left: str
    right: str
    name: str | None = None

    def outputs(self) -> list[str]:
        return [self.name or f"{self.left}_{self.kind}_{self.right}"]


AnyEntry = Rolling | Career | SinceLast | Relative | Interaction


class Derived(_Entry):
    rolling: list[Rolling] = Field(default_factory=list)
    career: list[Career] = Field(default_factory=list)
    since_last: list[SinceLast] = Field(default_factory=list)
    relative: list[Relative] = Field(default_factory=list)
    interactions: list[Interaction] = Field(default_factory=list)
    field_size: bool = False
    places: PositiveInt = Field(default=3, description="Finishing this high or better is a place.")

    def entries(self) -> list[tuple[str, AnyEntry]]:
        """Each entry with the name errors use for it, e.g. 'rolling[1]'."""
        named: list[tuple[str, AnyEntry]] = []
        for section in ("rolling", "career", "since_last", "relative", "interactions"):
            for i, entry in enumerate(getattr(self, section)):
                named.append((f"{section}[{i}]", entry))
        return named
