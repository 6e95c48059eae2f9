"""boto3 clients, built lazily and once, pointed at the local stack when configured."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from gallop.settings import Settings, get_settings


@lru_cache(maxsize=16)
def _client(service: str, region: str, endpoint_url: str | None) -> Any:
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4")
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=config)


def client(service: str, settings: Settings | None = None) -> Any:
    settings = settings or get_settings()
    return _client(service, settings.aws_region, settings.aws_endpoint_url)


def reset_clients() -> None:
    """Forget cached clients (after the environment pointed somewhere else)."""
    _client.cache_clear()
