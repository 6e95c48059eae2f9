"""Every error the API answers, as RFC 9457 problem details (application/problem+json):

    {"type": "https://gallop.dev/problems/<code>", "title": "<fixed per code>",
     "status": 404, "detail": "<this occurrence>", "code": "<code>"}

with `errors` (where, why, what was given) for a validation failure, and other members a
route adds (a race card's `problems`). One module makes them: the app's exception
handlers, the body limit, and predict's hand-written path (which must stay light: no
pydantic or FastAPI on that path, only orjson).
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gallop.echo import clip

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://gallop.dev/problems/"

# code and title per status: a client tells one kind of error from another by `code`.
CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the resource's state"),
    413: ("payload_too_large", "Payload too large"),
    422: ("validation_failed", "The request is not valid"),
    429: ("throttled", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("unavailable", "Service unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}


def code_of(status: int) -> tuple[str, str]:
    """(code, title) of a status; one not listed is named after its reason phrase."""
    if status in CODES:
        return CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Client error" if status < 500 else "Server error"
    return phrase.lower().replace(" ", "_").replace("-", "_"), phrase


def problem(status: int, detail: str, **extensions: Any) -> dict[str, Any]:
    """The problem document of one occurrence; extensions are added as members."""
    code, title = code_of(status)
    return {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extensions,
    }


def problem_bytes(status: int, detail: str, **extensions: Any) -> bytes:
    return orjson.dumps(problem(status, detail, **extensions))


def validation_errors(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    """(detail, errors) of pydantic-style errors: the detail names each offending field,
    e.g. 'body.task: Input should be ...'; each error says where (loc), why (msg) and, cut
    short, what was given (input)."""
    listed = [
        {k: e[k] for k in ("loc", "msg", "type") if k in e}
        | ({"input": _given(e["input"])} if "input" in e else {})
        for e in errors
    ]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in listed]
    return "; ".join(parts), listed


def _given(value: Any) -> Any:
    """A value as JSON can hold it, cut short: NaN and objects as their text."""
    if (
        value is None
        or isinstance(value, bool | int)
        or (isinstance(value, float) and math.isfinite(value))
    ):
        return value
    return clip(value if isinstance(value, str) else repr(value))


# -- FastAPI ------------------------------------------------------------------------------


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extensions: Any
) -> Any:
    from starlette.responses import Response

    return Response(
        problem_bytes(status, detail, **extensions),
        status_code=status,
        headers=headers,
        media_type=MEDIA_TYPE,
    )


def install(app: Any) -> None:
    """The app's one set of exception handlers: every 4xx and 5xx becomes a problem."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)


async def _http_error(request: Any, exc: Exception) -> Any:
    # Starlette's (unknown path 404, 405) and FastAPI's HTTPException alike.
    status: int = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None)
    text = detail if isinstance(detail, str) else code_of(status)[1]
    return problem_response(status, text, getattr(exc, "headers", None))


async def _validation_error(request: Any, exc: Exception) -> Any:
    detail, errors = validation_errors(exc.errors())  # type: ignore[attr-defined]
    return problem_response(422, detail, errors=errors)


async def _unhandled(request: Any, exc: Exception) -> Any:
    """A bug or an outage: logged with its trace (by the server), answered without it."""
    return problem_response(500, "an unexpected error; it was logged")


# -- the OpenAPI document -------------------------------------------------------------------


class ValidationItem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query or path, then the field.")
    msg: str
    type: str
    input: Any = Field(None, description="What was given, cut short.")


class Problem(BaseModel):
    """RFC 9457 problem details; a route may add members (a race card's `problems`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="https://gallop.dev/problems/{code}")
    title: str = Field(description="Short, the same for every problem of this code.")
    status: int
    detail: str = Field(description="What went wrong this time.")
    code: str = Field(description="Machine-readable, snake_case: not_found, conflict, ...")
    errors: list[ValidationItem] | None = Field(
        None, description="Each offending field (validation_failed only)."
    )


EXAMPLE_DETAILS = {
    401: "missing x-api-key header",
    403: "this needs the writer role: the key 'dashboard' has reader",
    404: "no dataset named 'races'",
    405: "Method Not Allowed",
    409: "the features of version 'v-2026...' are not computed yet",
    413: "the body is over 1,048,576 bytes, the most this route takes",
    429: "Too Many Requests",
    500: "an unexpected error; it was logged",
}


def example_of(status: int) -> dict[str, Any]:
    if status == 422:
        error: dict[str, Any] = {"loc": ["body", "test_share"], "type": "less_than"}
        error |= {"msg": "Input should be less than 1", "input": 2}
        return problem(422, "body.test_share: Input should be less than 1", errors=[error])
    return problem(status, EXAMPLE_DETAILS.get(status, code_of(status)[1]))
