"""The HTTP contract: every route behind x-api-key, clear 4xx for bad requests."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gallop.api.app import create_app
from gallop.metadata.db import engine_for, migrate
from gallop.settings import Settings
from tests.conftest import load_event

KEY = "test-key-123"
FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    # Presigned POSTs are signed locally; no S3 call is made by these tests.
    return Settings(
        state_dir=tmp_path, api_keys=f"other-key,{KEY}", aws_endpoint_url="http://127.0.0.1:9"
    )


@pytest.fixture()
def api(settings: Settings) -> Iterator[TestClient]:
    migrate(engine_for(settings.sqlalchemy_url))
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as client:
        yield client


RACES = {
    "name": "races",
    "task": "ranking",
    "target": "position",
    "group": "race_id",
    "target_order": "ascending",
}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_refuses_a_missing_or_wrong_key(settings: Settings) -> None:
    migrate(engine_for(settings.sqlalchemy_url))
    anonymous = TestClient(create_app(settings))  # sends no x-api-key header at all
    paths = anonymous.get("/openapi.json").json()["paths"]
    operations = [(method, path) for path, item in paths.items() for method in item]
    assert len(operations) >= 8
    for method, path in operations:
        for headers in ({}, {"x-api-key": ""}, {"x-api-key": "wrong"}):
            reply = anonymous.request(method.upper(), concrete(path), headers=headers)
            assert reply.status_code == 401, (method, path, headers)
            assert "key" in reply.json()["detail"]


def test_health_with_a_key(api: TestClient) -> None:
    reply = api.get("/v1/health")
    assert reply.status_code == 200
    assert reply.json()["database"] == "ok"
    assert reply.headers["x-correlation-id"]


def test_register_is_idempotent_and_a_changed_spec_conflicts(api: TestClient) -> None:
    assert api.post("/v1/datasets", json=RACES).status_code == 201
    assert api.post("/v1/datasets", json=RACES).status_code == 200
    changed = api.post("/v1/datasets", json={**RACES, "entity": "horse_id"})
    assert changed.status_code == 409
    assert "another spec" in changed.json()["detail"]
    assert [d["name"] for d in api.get("/v1/datasets").json()] == ["races"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/datasets/nope",
        "/v1/datasets/nope/versions",
        "/v1/datasets/nope/versions/v-1",
        "/v1/datasets/nope/uploads/u1",
    ],
)
def test_unknown_dataset_is_404(api: TestClient, path: str) -> None:
    reply = api.get(path)
    assert reply.status_code == 404
    assert "nope" in reply.json()["detail"]
    assert api.post("/v1/datasets/nope/uploads", json={}).status_code == 404


def test_unknown_version_and_upload_are_404(api: TestClient) -> None:
    api.post("/v1/datasets", json=RACES)
    assert api.get("/v1/datasets/races/versions/v-0000").status_code == 404
    assert api.get("/v1/datasets/races/uploads/0000").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**RACES, "task": "classification"}, "body.task"),
        ({k: v for k, v in RACES.items() if k != "target"}, "body.target"),
        ({**RACES, "name": "Bad Name!"}, "body.name"),
        ({**RACES, "features": "draw"}, "body.features"),
    ],
)
def test_malformed_dataset_body_is_422_naming_the_field(
    api: TestClient, body: dict, field: str
) -> None:
    reply = api.post("/v1/datasets", json=body)
    assert reply.status_code == 422
    assert field in reply.json()["message"]


def test_malformed_upload_body_is_422_naming_the_field(api: TestClient) -> None:
    api.post("/v1/datasets", json=RACES)
    reply = api.post("/v1/datasets/races/uploads", json={"format": "xlsx"})
    assert reply.status_code == 422
    assert "body.format" in reply.json()["message"]
    not_json = api.post(
        "/v1/datasets", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422


def test_upload_reply_is_a_presigned_post_for_a_server_chosen_key(api: TestClient) -> None:
    api.post("/v1/datasets", json=RACES)
    reply = api.post("/v1/datasets/races/uploads", json={"format": "parquet"})
    assert reply.status_code == 201
    upload = reply.json()
    assert upload["key"] == f"raw/races/{upload['upload_id']}/data.parquet"
    assert upload["fields"]["key"] == upload["key"]
    assert upload["url"].startswith("http://127.0.0.1:9/")
    status = api.get(f"/v1/datasets/races/uploads/{upload['upload_id']}").json()
    assert status["status"] == "PENDING" and status["version_id"] is None


def test_openapi_declares_the_api_key_scheme(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "x-api-key"


def _load_api_function() -> object:
    spec = importlib.util.spec_from_file_location("api_handler", FUNCTIONS / "api" / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def deployed_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment the CDK stack gives the api function."""
    from gallop.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("GALLOP_DATA_BUCKET", "gallop-data")
    monkeypatch.setenv("GALLOP_API_KEYS", KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_api_gateway_event_through_the_lambda_handler(
    settings: Settings, deployed_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the deployed function and a real API Gateway proxy event
    migrate(engine_for(settings.sqlalchemy_url))
    module = _load_api_function()
    event = load_event("apigw_get_health.json")
    event["headers"]["x-api-key"] = event["multiValueHeaders"]["x-api-key"][0] = KEY
    capsys.readouterr()
    # WHEN Lambda invokes the handler THEN Mangum answers as API Gateway expects
    reply = module.handler(event, _Context())  # type: ignore[attr-defined]
    assert reply["statusCode"] == 200
    assert json.loads(reply["body"])["status"] == "ok"
    # The correlation id is API Gateway's request id.
    headers = {k.lower(): v for k, v in reply.get("headers", {}).items()}
    headers.update({k.lower(): v[0] for k, v in reply.get("multiValueHeaders", {}).items()})
    assert headers["x-correlation-id"] == event["requestContext"]["requestId"]
    # AND the invocation published its request metrics (EMF on stdout)
    emf = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert emf and emf[-1]["Requests"] == [1.0]

    event["headers"]["x-api-key"] = event["multiValueHeaders"]["x-api-key"][0] = "wrong"
    assert module.handler(event, _Context())["statusCode"] == 401  # type: ignore[attr-defined]


def test_a_function_deployed_without_its_configuration_fails_at_cold_start(
    deployed_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gallop.settings import MissingSettings, get_settings

    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("GALLOP_API_KEYS")
    get_settings.cache_clear()
    with pytest.raises(
        MissingSettings,
        match=r"set DATABASE_URL \(or GALLOP_DATABASE_HOST, .*\), GALLOP_API_KEYS",
    ):
        _load_api_function()


class _Context:
    function_name = "gallop-api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gallop-api"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def test_the_api_function_imports_no_pandas_or_pyarrow(settings: Settings) -> None:
    # The api Lambda ships without them (they alone exceed its size budget).
    heavy = ("pandas", "pyarrow", "lightgbm", "scipy", "sklearn")
    handler = str(FUNCTIONS / "api" / "handler.py")
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('h', {handler!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "DATABASE_URL": settings.sqlalchemy_url, "GALLOP_API_KEYS": KEY}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_behind_a_gateway_that_checks_keys_the_app_requires_its_verdict(
    settings: Settings, deployed_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gallop.settings import get_settings

    # GIVEN the deployed configuration: API Gateway (REST, apiKeyRequired) checks the keys
    monkeypatch.delenv("GALLOP_API_KEYS")
    monkeypatch.setenv("GALLOP_API_KEY_SOURCE", "gateway")
    get_settings.cache_clear()
    migrate(engine_for(settings.sqlalchemy_url))
    module = _load_api_function()
    event = load_event("apigw_get_health.json")
    event["headers"].pop("x-api-key")
    event["multiValueHeaders"].pop("x-api-key")
    # WHEN the gateway names the key it validated THEN the request is served
    event["requestContext"]["identity"]["apiKeyId"] = "k3y1d"
    assert module.handler(event, _Context())["statusCode"] == 200  # type: ignore[attr-defined]
    # AND a request that did not come through a key check is refused
    event["requestContext"]["identity"].pop("apiKeyId")
    reply = module.handler(event, _Context())  # type: ignore[attr-defined]
    assert reply["statusCode"] == 401
    assert "gateway" in json.loads(reply["body"])["detail"]
