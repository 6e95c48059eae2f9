"""Settings: environment in, explicit configuration required where it matters."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from gallop.settings import MissingSettings, Settings, _url_from_secret


def test_database_url_from_an_rds_secret_and_the_proxy_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with mock_aws():
        secret = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="gallop/db",
            SecretString=json.dumps(
                {
                    "username": "gallop",
                    "password": "p@ss:/word",
                    "host": "cluster.internal",
                    "port": 5432,
                    "dbname": "gallop",
                }
            ),
        )
        monkeypatch.setenv("GALLOP_DATABASE_SECRET_ARN", secret["ARN"])
        monkeypatch.setenv("GALLOP_DATABASE_HOST", "proxy.internal")
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        monkeypatch.delenv("DATABASE_URL", raising=False)
        _url_from_secret.cache_clear()
        settings = Settings()
        assert settings.has_database
        # The password is quoted, and the proxy endpoint wins over the cluster host.
        assert settings.sqlalchemy_url == (
            "postgresql+psycopg://gallop:p%40ss%3A%2Fword@proxy.internal:5432/gallop"
        )


def test_an_explicit_url_wins_and_plain_postgres_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/x")
    monkeypatch.setenv("GALLOP_DATABASE_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:1:secret:x")
    assert Settings().sqlalchemy_url == "postgresql+psycopg://u@db:5432/x"


def test_require_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "GALLOP_DATABASE_SECRET_ARN", "GALLOP_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingSettings) as caught:
        Settings().require_for("api")
    assert str(caught.value) == (
        "gallop is not configured: set DATABASE_URL (or GALLOP_DATABASE_SECRET_ARN), "
        "GALLOP_API_KEYS (or GALLOP_API_KEY_SOURCE=gateway)"
    )
