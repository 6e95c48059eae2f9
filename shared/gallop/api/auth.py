"""Who calls (an API key's name and roles) and what their key allows.

The global dependency identifies the caller and checks the role its route needs
(`roles_for`, one table for every route); a route whose role depends on its body narrows
it with `require_role` once it has read the body.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from gallop.echo import clip
from gallop.settings import ROLES, ROLES_TAG, ApiKey, Role
from gallop.trusted import Trusted

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

# RFC 9110: a 401 names the scheme the client should use.
CHALLENGE = {"www-authenticate": 'ApiKey header="x-api-key"'}
API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="gallop API key")
# The tag of a deployed API key that lists its roles ("reader+writer"); untagged: reader.

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writes that need another role than writer, by method and path ({} stands for one path
# segment). A set of roles means the body decides: any of them passes the dependency,
# the route then narrows it with require_role.
ROUTE_ROLES: dict[tuple[str, str], frozenset[Role]] = {
    ("POST", "/v1/predict"): frozenset({"reader"}),
    ("POST", "/v1/explain"): frozenset({"reader"}),
    ("POST", "/v1/datasets/{}/versions/{}/features/card"): frozenset({"reader"}),
    ("POST", "/v1/approvals/{}"): frozenset({"approver"}),
    ("POST", "/v1/datasets/{}/aliases/champion/rollback"): frozenset({"approver"}),
    # champion: approver, challenger: writer
    ("POST", "/v1/models/{}/promote"): frozenset({"writer", "approver"}),
    # auto_promote: approver, else writer
    ("PUT", "/v1/datasets/{}/retraining"): frozenset({"writer", "approver"}),
}
# Matched against the request's path, not the route's template: FastAPI's route object
# for an included router carries the template without the router's prefix.
_ROUTE_PATTERNS = [
    (method, re.compile(re.escape(path).replace(re.escape("{}"), "[^/]+")), roles)
    for (method, path), roles in ROUTE_ROLES.items()
]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its key's name (what the alias history records, never the key)
    and the roles the key has."""

    name: str
    roles: frozenset[str]


def roles_for(method: str, path: str) -> frozenset[Role]:
    """The roles, any one of which a request (its method and path under the app) needs."""
    if method in SAFE_METHODS:
        return frozenset({"reader"})
    for route_method, pattern, roles in _ROUTE_PATTERNS:
        if method == route_method and pattern.fullmatch(path):
            return roles
    return frozenset({"writer"})


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    # async: a plain def would run in a worker thread, a thread hop on every request.
    settings = request.app.state.settings
    if settings.api_key_source == "gateway":
        key_id = _gateway_key_id(request.scope.get("aws.event"))
        if not key_id:
            raise HTTPException(401, detail=_NO_GATEWAY_KEY, headers=CHALLENGE)
        caller = await run_in_threadpool(gateway_keys(request.app).caller, key_id)
    else:
        found = _settings_key(settings, key)
        if isinstance(found, str):
            raise HTTPException(401, detail=found, headers=CHALLENGE)
        caller = Caller(found.name, found.roles)
    request.state.caller = caller
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    require_role(request, *roles_for(request.method, path))


def require_role(request: Request, *roles: Role) -> Caller:
    """The caller, when its key has one of these roles; else 403 naming the role needed and
    the key's name."""
    caller: Caller = request.state.caller
    if not caller.roles.intersection(roles):
        needed = " or ".join(r for r in ROLES if r in roles)
        has = ", ".join(r for r in ROLES if r in caller.roles) or "no role"
        raise HTTPException(
            403,
            detail=f"this needs the {needed} role: the key {caller.name!r} has {has}",
        )
    return caller


def actor_of(request: Request) -> str:
    """Who asks, for the alias history and approvals: the API key's name (never the key)."""
    caller: Caller = request.state.caller
    return caller.name


def key_refusal(settings: Any, key: str | None, event: dict[str, Any] | None) -> str | None:
    """Why a request with this key (and, on Lambda, this API Gateway event) is refused, or
    None when it may pass. The predict function's own path: every key may predict."""
    if settings.api_key_source == "gateway":
        return None if _gateway_key_id(event) else _NO_GATEWAY_KEY
    found = _settings_key(settings, key)
    return found if isinstance(found, str) else None


_NO_GATEWAY_KEY = "no API key validated by the gateway"


def _gateway_key_id(event: dict[str, Any] | None) -> str | None:
    # A REST API with apiKeyRequired only invokes us after validating the key; it names
    # the key it validated. No key id means the request did not come that way.
    identity = ((event or {}).get("requestContext") or {}).get("identity") or {}
    key_id: str | None = identity.get("apiKeyId")
    return key_id


def _settings_key(settings: Any, key: str | None) -> ApiKey | str:
    """The api_keys entry this key is, or why there is none."""
    if not key:
        return "missing x-api-key header"
    # Compare against every key in constant time, so timing tells nothing.
    found = None
    for entry in settings.api_key_entries:
        if hmac.compare_digest(key.encode(), entry.secret.encode()):
            found = entry
    return found or "invalid API key"


class GatewayKeys:
    """Name and roles of the API Gateway keys that call, read from the keys themselves
    (their name, their `gallop:roles` tag) and kept for `ttl` seconds: a changed tag
    reaches every container within it."""

    def __init__(self, client: Callable[[], Any], ttl: float) -> None:
        self._client = client
        self._known: Trusted[str, Caller] = Trusted(ttl)

    def caller(self, key_id: str) -> Caller:
        return self._known.get(key_id, lambda: self._read(key_id))

    def _read(self, key_id: str) -> Caller:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            key = self._client().get_api_key(apiKey=key_id)
        except (BotoCoreError, ClientError) as exc:
            code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else "no answer"
            _log().error("reading an API key failed", extra={"key_id": key_id, "error": str(exc)})
            raise HTTPException(
                503,
                detail=f"could not read the roles of API key {clip(key_id)} from API Gateway "
                f"({code}): try again shortly",
            ) from None
        return Caller(key.get("name") or key_id, tagged_roles(key_id, key.get("tags") or {}))


def tagged_roles(key_id: str, tags: dict[str, str]) -> frozenset[str]:
    """The roles a deployed key's tag gives it: every key may read; an unknown role in the
    tag gives nothing (logged), so a typo never widens what a key may do."""
    given = {r.strip() for r in tags.get(ROLES_TAG, "").split("+") if r.strip()}
    unknown = given.difference(ROLES)
    if unknown:
        _log().warning(
            "API key tag names unknown roles", extra={"key_id": key_id, "roles": sorted(unknown)}
        )
    return frozenset({"reader"} | (given & set(ROLES)))


def gateway_keys(app: Any) -> GatewayKeys:
    """The app's GatewayKeys, made on first use (after moto or the local stack is up)."""
    if not hasattr(app.state, "gateway_keys"):
        from gallop import aws

        settings = app.state.settings
        app.state.gateway_keys = GatewayKeys(
            lambda: aws.client("apigateway", settings), settings.alias_ttl_seconds
        )
    keys: GatewayKeys = app.state.gateway_keys
    return keys


@cache
def _log() -> Logger:
    # Made on first use: the predict function imports this module and never Powertools.
    from gallop.observability import logger

    return logger("gallop-api")
