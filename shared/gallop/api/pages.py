"""The one envelope of every list route: {"items": [...], "next_cursor": "..." | null}.

A client asks for `limit` items (1 to 500, 100 by default) and passes back `next_cursor`
as `cursor` for the next page, until it is null. Cursors are opaque (the last item's sort
key, gallop.metadata.repo.keyset_page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from gallop.metadata.repo import BadCursor

T = TypeVar("T")
R = TypeVar("R")

Limit = Annotated[int, Query(ge=1, le=500, description="The most items on this page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=1000, description="`next_cursor` of the page before; none: the first."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


def fetched(fetch: Callable[[], tuple[list[R], str | None]]) -> tuple[list[R], str | None]:
    """The page the data-access function fetches; a cursor it cannot read is a 422."""
    try:
        return fetch()
    except BadCursor as exc:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "msg": str(exc), "type": "cursor"}]
        ) from None
