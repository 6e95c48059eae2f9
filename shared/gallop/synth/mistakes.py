"""Typical mistakes in a race file, made on purpose: the demo's broken upload and the
validation tests' bad inputs are built from these, so both show the same errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def typo_in_number(frame: pd.DataFrame, row: int = 3, column: str = "weight_kg") -> None:
    """A decimal comma where a number belongs (57,5)."""
    frame.loc[row, column] = "57,5"


def horse_twice(frame: pd.DataFrame) -> None:
    """The first race's second runner becomes its first runner again."""
    first_race = frame["race_id"] == frame.loc[0, "race_id"]
    frame.loc[frame.index[first_race][1], "horse_id"] = frame.loc[0, "horse_id"]


def lonely_race(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with one more race of a single runner (nothing to rank it against)."""
    return pd.concat([frame, frame.iloc[[-1]].assign(race_id="R-LONELY")])


def broken_copy(source: Path, out: Path) -> Path:
    """A race file with three typical mistakes: a typo in a number, a horse entered twice
    in one race, and a race with a single runner."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    typo_in_number(frame)
    horse_twice(frame)
    lonely_race(frame).to_csv(out, index=False, lineterminator="\n")
    return out
