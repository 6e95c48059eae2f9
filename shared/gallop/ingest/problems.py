"""Validation problems: what is wrong, in which column, on which rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gallop.echo import clip


@dataclass
class Problem:
    code: str
    message: str
    column: str | None = None
    rows: list[int] = field(default_factory=list)  # 1-based data rows, header not counted
    row_count: int = 0
    examples: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # Messages and column names come from the upload: a report must stay small whatever
        # they hold (row numbers and examples are capped where they are chosen).
        fields = asdict(self)
        for name in ("message", "column"):
            if fields[name] is not None:
                fields[name] = clip(fields[name], MAX_TEXT_CHARS)
        return {k: v for k, v in fields.items() if v not in (None, [], 0)}


MAX_TEXT_CHARS = 1_000
MAX_NAMES = 10
MAX_PROBLEMS = 50  # per list in a report: one per column of a wide table would be too many


def some_names(names: Sequence[Any], limit: int = MAX_NAMES) -> str:
    """The first few of a list of names, and how many more there are: a header of a
    million columns must not put a million names into a report."""
    shown = ", ".join(clip(repr(n)) for n in names[:limit])
    more = len(names) - limit
    return f"[{shown}{f', ... and {more:,} more' if more > 0 else ''}]"


def capped(problems: list[Problem], limit: int = MAX_PROBLEMS) -> tuple[list[Problem], int]:
    """The first `limit` problems, and how many were left out."""
    return problems[:limit], max(0, len(problems) - limit)


class UnreadableFile(Exception):
    """The bytes cannot be read as a table at all; carries the problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def at_rows(
    code: str,
    message: str,
    mask: np.ndarray,
    *,
    column: str | None = None,
    values: Any = None,
    limit: int = 20,
) -> Problem:
    """A problem located by a boolean mask over the rows; quotes the first `limit` rows."""
    positions = np.flatnonzero(mask)
    rows = (positions[:limit] + 1).tolist()
    examples: list[Any] = []
    if values is not None:
        seen: list[Any] = []
        for value in np.asarray(values, dtype=object)[positions[: limit * 5]]:
            text = value if isinstance(value, str) else repr(value)
            if text not in seen:
                seen.append(text[:40])
            if len(seen) == 5:
                break
        examples = seen
    where = _describe_rows(rows, len(positions))
    return Problem(
        code=code,
        message=f"{message} ({where})",
        column=column,
        rows=rows,
        row_count=int(len(positions)),
        examples=examples,
    )


def _describe_rows(rows: list[int], total: int) -> str:
    shown = ", ".join(str(r) for r in rows[:5])
    more = f" and {total - min(5, len(rows))} more" if total > 5 else ""
    noun = "row" if total == 1 else "rows"
    return f"{total} {noun}: {shown}{more}"
