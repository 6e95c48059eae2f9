"""The x-api-key check that guards every route."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="gallop API key")


async def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    # async: a plain def would run in a worker thread, a thread hop on every request.
    check_api_key(request, key)


def check_api_key(request: Request, key: str | None) -> None:
    """401 unless the request carries an accepted key (or the gateway validated one)."""
    settings = request.app.state.settings
    if settings.api_key_source == "gateway":
        # A REST API with apiKeyRequired only invokes us after validating the key; it names
        # the key it validated. No key id means the request did not come that way.
        event = request.scope.get("aws.event") or {}
        identity = (event.get("requestContext") or {}).get("identity") or {}
        if not identity.get("apiKeyId"):
            raise HTTPException(status_code=401, detail="no API key validated by the gateway")
        return
    accepted = settings.api_key_set
    if not key:
        raise HTTPException(status_code=401, detail="missing x-api-key header")
    # Compare against every key in constant time, so timing tells nothing.
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in accepted):
        raise HTTPException(status_code=401, detail="invalid API key")
