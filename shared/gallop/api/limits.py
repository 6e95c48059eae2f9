"""Request bodies held to a size: refused with 413 before more than that is read.

A declared Content-Length over the limit is refused at once; a body without one
(chunked) is counted as it streams in and refused when the count passes the limit.
Either way the reply closes the connection, so the server reads nothing more. On Lambda
(Mangum) the body arrives whole in the event, and is counted all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from gallop.api.problems import problem_response

# Rows to score or to complete into features: up to 1,000 of them per request.
ROWS_ROUTES = re.compile(r"^/v1/(predict|explain|datasets/[^/]+/versions/[^/]+/features/card)$")
CLOSE = {"connection": "close"}  # what is left of the body is never read


def body_limit(settings: Any, path: str) -> int:
    """The most bytes a request body to `path` may have."""
    return int(settings.max_rows_body_bytes if ROWS_ROUTES.match(path) else settings.max_body_bytes)


def too_large(limit: int) -> str:
    return f"the body is over {limit:,} bytes, the most this route takes"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit), headers=CLOSE)


Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class BodyLimit:
    """ASGI middleware: every route's body held to body_limit(settings, path)."""

    def __init__(self, app: Any, settings: Any) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            refusal = problem_response(413, too_large(limit), headers=CLOSE)
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised in the route: FastAPI answers it as it is
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None
