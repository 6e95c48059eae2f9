"""API keys have names and roles: any key reads, writers write, approvers decide the
champion; on AWS the roles come from each API Gateway key's `gallop:roles` tag."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from moto import mock_aws

from gallop.api.app import create_app, meter
from gallop.api.auth import roles_for
from gallop.api.gateway import asgi_handler
from gallop.metadata.db import engine_for, migrate
from gallop.settings import ROLES_TAG, Settings
from tests.conftest import load_event

KEYS = {"boss": "k-boss", "ci": "k-ci", "viewer": "k-viewer", "legacy": "k-legacy"}
RACES = {
    "name": "races",
    "task": "ranking",
    "target": "position",
    "group": "race_id",
    "target_order": "ascending",
}
# The routes an approver decides, with a body each takes: no such request or dataset
# exists, so a key allowed past the role check gets the 404 of the thing missing.
APPROVAL = "/v1/approvals/ap-" + "0" * 20
APPROVER_CALLS = (
    (APPROVAL, {"decision": "approve"}, "no approval request"),
    ("/v1/datasets/races/aliases/champion/rollback", {}, "no dataset"),
)


@pytest.fixture()
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        state_dir=tmp_path,
        aws_endpoint_url="http://127.0.0.1:9",  # nothing here may reach AWS
        api_keys=(
            f"boss:approver:{KEYS['boss']},ci:reader+writer:{KEYS['ci']},"
            f"viewer:reader:{KEYS['viewer']},{KEYS['legacy']}"  # a bare key: as before roles
        ),
    )
    migrate(engine_for(settings.sqlalchemy_url))
    return create_app(settings)


@pytest.fixture()
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def as_key(name: str) -> dict[str, str]:
    return {"x-api-key": KEYS[name]}


def test_a_reader_reads_and_is_refused_a_write_naming_the_role(api: TestClient) -> None:
    assert api.get("/v1/datasets", headers=as_key("viewer")).status_code == 200
    refused = api.post("/v1/datasets", json=RACES, headers=as_key("viewer"))
    assert refused.status_code == 403
    problem = refused.json()
    assert problem["code"] == "forbidden"
    assert problem["detail"] == "this needs the writer role: the key 'viewer' has reader"
    assert KEYS["viewer"] not in refused.text
    # AND nothing was written
    assert api.get("/v1/datasets", headers=as_key("viewer")).json()["items"] == []
    assert api.post("/v1/datasets", json=RACES, headers=as_key("ci")).status_code == 201


@pytest.mark.parametrize(("path", "body", "missing"), APPROVER_CALLS)
def test_a_writer_is_refused_what_an_approver_decides(
    api: TestClient, path: str, body: dict[str, str], missing: str
) -> None:
    refused = api.post(path, json=body, headers=as_key("ci"))
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "this needs the approver role: the key 'ci' has reader, writer"
    )
    allowed = api.post(path, json=body, headers=as_key("boss"))
    assert allowed.status_code == 404 and missing in allowed.json()["detail"]


def test_a_bare_key_has_every_role_as_before_roles(api: TestClient) -> None:
    path, body, missing = APPROVER_CALLS[0]
    allowed = api.post(path, json=body, headers=as_key("legacy"))
    assert allowed.status_code == 404 and missing in allowed.json()["detail"]
    assert api.post("/v1/datasets", json=RACES, headers=as_key("legacy")).status_code == 201


@pytest.mark.parametrize(
    ("key", "alias", "status"),
    [
        ("viewer", "challenger", 403),
        ("viewer", "champion", 403),
        ("ci", "challenger", 404),  # allowed: the model then is not found
        ("ci", "champion", 403),
        ("boss", "champion", 404),
        ("boss", "challenger", 403),
    ],
)
def test_promoting_to_champion_is_the_approvers_and_to_challenger_the_writers(
    api: TestClient, key: str, alias: str, status: int
) -> None:
    reply = api.post("/v1/models/m-nope/promote", json={"alias": alias}, headers=as_key(key))
    assert reply.status_code == status, reply.text
    if status == 403:
        needed = {"viewer": "writer or approver", "ci": "approver", "boss": "writer"}[key]
        assert reply.json()["detail"].startswith(f"this needs the {needed} role: the key {key!r}")


def test_every_route_needs_the_role_the_table_gives(app: FastAPI) -> None:
    """The role each route of today's app (and the approver routes) needs: reads and
    predictions any key; writes a writer; what decides the champion an approver."""
    paths = app.openapi()["paths"]
    needed = {
        (method.upper(), path): roles_for(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in paths.items()
        for method in operations
    }
    expected = {
        ("GET", "/v1/datasets/{name}/versions/{version_id}"): {"reader"},
        ("POST", "/v1/predict"): {"reader"},
        ("POST", "/v1/explain"): {"reader"},
        ("POST", "/v1/datasets/{name}/versions/{version_id}/features/card"): {"reader"},
        ("POST", "/v1/datasets"): {"writer"},
        ("POST", "/v1/training-runs"): {"writer"},
        ("DELETE", "/v1/training-runs/{run_id}"): {"writer"},
        ("POST", "/v1/uploads/unclaimed/{unclaimed_id}/retry"): {"writer"},
        ("POST", "/v1/monitoring/checks"): {"writer"},
        ("POST", "/v1/models/{model_id}/promote"): {"writer", "approver"},
        ("POST", "/v1/approvals/{approval_id}"): {"approver"},
        ("POST", "/v1/datasets/{name}/aliases/champion/rollback"): {"approver"},
    }
    assert {k: needed[k] for k in expected} == expected
    assert all(roles == {"reader"} for (method, _), roles in needed.items() if method == "GET")
    # AND the API's description says which operations may answer 403
    for (method, path), roles in needed.items():
        documented = "403" in paths[path][method.lower()]["responses"]
        assert documented == (roles != {"reader"}), (method, path)


# -- on AWS: the roles are the API Gateway key's tag ------------------------------------


def gateway_event(method: str, path: str, key_id: str, body: Any = None) -> dict[str, Any]:
    """An API Gateway REST event for a key the gateway validated (no key value in it)."""
    event = load_event("apigw_get_health.json")
    headers = {"content-type": "application/json"}
    event |= {
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "pathParameters": {"proxy": path.removeprefix("/")},
        "body": None if body is None else json.dumps(body),
    }
    event["requestContext"] |= {"httpMethod": method, "path": "/prod" + path}
    event["requestContext"]["identity"] = {"apiKeyId": key_id, "sourceIp": "203.0.113.7"}
    return event


class _Context:
    function_name = "gallop-api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:gallop-api"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """The api function's app behind API Gateway (its handler), and moto's API Gateway."""
    with mock_aws():
        settings = Settings(state_dir=tmp_path, api_key_source="gateway", alias_ttl_seconds=3600)
        migrate(engine_for(settings.sqlalchemy_url))
        handler = asgi_handler(create_app(settings))
        try:
            yield (lambda event: handler(event, _Context())), boto3.client("apigateway")
        finally:
            meter.clear_metrics()  # the function's handler would have published them


def test_a_gateway_key_has_the_roles_its_tag_names(gateway: tuple[Any, Any]) -> None:
    call, apigateway = gateway
    # GIVEN a key tagged writer and one without the tag
    ci = apigateway.create_api_key(name="ci", enabled=True, tags={ROLES_TAG: "reader+writer"})
    plain = apigateway.create_api_key(name="dashboard", enabled=True)
    # WHEN each writes, THEN the tagged one may; the untagged one only reads
    assert call(gateway_event("POST", "/v1/datasets", ci["id"], RACES))["statusCode"] == 201
    refused = call(gateway_event("POST", "/v1/datasets", plain["id"], {**RACES, "name": "b"}))
    assert refused["statusCode"] == 403
    assert json.loads(refused["body"])["detail"] == (
        "this needs the writer role: the key 'dashboard' has reader"
    )
    assert call(gateway_event("GET", "/v1/datasets", plain["id"]))["statusCode"] == 200
    # AND approving needs the approver role, named by the key's tag
    boss = apigateway.create_api_key(name="boss", enabled=True, tags={ROLES_TAG: "approver"})
    decide = {"decision": "approve"}
    allowed = call(gateway_event("POST", APPROVAL, boss["id"], decide))
    assert allowed["statusCode"] == 404  # past the role check: no such request
    assert call(gateway_event("POST", APPROVAL, ci["id"], decide))["statusCode"] == 403


def test_a_misspelt_role_in_the_tag_gives_nothing(gateway: tuple[Any, Any]) -> None:
    call, apigateway = gateway
    key = apigateway.create_api_key(name="typo", enabled=True, tags={ROLES_TAG: "aprover"})
    reply = call(gateway_event("POST", APPROVAL, key["id"], {"decision": "approve"}))
    assert reply["statusCode"] == 403
    assert "the key 'typo' has reader" in json.loads(reply["body"])["detail"]


def test_a_key_is_read_once_per_ttl_and_a_failed_read_is_a_503(
    gateway: tuple[Any, Any],
) -> None:
    call, apigateway = gateway
    key = apigateway.create_api_key(name="ci", enabled=True, tags={ROLES_TAG: "writer"})
    assert call(gateway_event("GET", "/v1/datasets", key["id"]))["statusCode"] == 200
    # GIVEN the key is gone from API Gateway: this container still knows it (the TTL is an hour)
    apigateway.delete_api_key(apiKey=key["id"])
    assert call(gateway_event("POST", "/v1/datasets", key["id"], RACES))["statusCode"] == 201
    # WHEN a key cannot be read THEN 503, saying so (not a 500, not the key refused)
    reply = call(gateway_event("GET", "/v1/datasets", "gone-key"))
    assert reply["statusCode"] == 503
    detail = json.loads(reply["body"])["detail"]
    assert detail == (
        "could not read the roles of API key gone-key from API Gateway (NotFoundException): "
        "try again shortly"
    )
