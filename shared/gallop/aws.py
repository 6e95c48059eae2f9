"""boto3 clients, built lazily and once, pointed at the local stack when configured."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from gallop.settings import Settings, get_settings


@lru_cache(maxsize=16)
def _client(service: str, region: str, endpoint_url: str | None, read_timeout: float | None) -> Any:
    # A call that waits a set time is not asked again: an invoke asked again runs twice.
    attempts = 1 if read_timeout else 5
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"},
        signature_version="s3v4",
        **({"read_timeout": read_timeout} if read_timeout else {}),
    )
    # A session of its own: boto3's default one keeps the credentials it first found, so
    # a client made after the environment changed (reset_clients) would sign with old ones.
    session = boto3.session.Session()
    return session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)


def client(
    service: str, settings: Settings | None = None, read_timeout: float | None = None
) -> Any:
    """read_timeout: seconds to wait for an answer (botocore's default: 60)."""
    settings = settings or get_settings()
    return _client(service, settings.aws_region, settings.aws_endpoint_url, read_timeout)


def reset_clients() -> None:
    """Forget cached clients (after the environment pointed somewhere else)."""
    _client.cache_clear()
