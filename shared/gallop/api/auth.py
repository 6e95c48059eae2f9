"""The x-api-key check that guards every route."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

# RFC 9110: a 401 names the scheme the client should use.
CHALLENGE = {"www-authenticate": 'ApiKey header="x-api-key"'}
API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="gallop API key")


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    # async: a plain def would run in a worker thread, a thread hop on every request.
    check_api_key(request, key)


def check_api_key(request: Request, key: str | None) -> None:
    """401 unless the request carries an accepted key (or the gateway validated one)."""
    refusal = key_refusal(request.app.state.settings, key, request.scope.get("aws.event"))
    if refusal:
        raise HTTPException(status_code=401, detail=refusal, headers=CHALLENGE)


def key_refusal(settings: Any, key: str | None, event: dict[str, Any] | None) -> str | None:
    """Why a request with this key (and, on Lambda, this API Gateway event) is refused, or
    None when it may pass."""
    if settings.api_key_source == "gateway":
        # A REST API with apiKeyRequired only invokes us after validating the key; it names
        # the key it validated. No key id means the request did not come that way.
        identity = ((event or {}).get("requestContext") or {}).get("identity") or {}
        return None if identity.get("apiKeyId") else "no API key validated by the gateway"
    if not key:
        return "missing x-api-key header"
    # Compare against every key in constant time, so timing tells nothing.
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_key_set):
        return "invalid API key"
    return None
