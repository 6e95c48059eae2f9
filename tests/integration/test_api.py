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

from gallop.api.app import create_app, meter
from gallop.metadata import repo
from gallop.metadata.db import engine_for, migrate
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from tests.conftest import load_event

KEY = "test-key-123"
FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


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


@pytest.mark.parametrize("source", ["settings", "gateway"])
def test_the_api_description_and_its_docs_need_no_key(settings: Settings, source: str) -> None:
    """Public on purpose (README): the schema holds no data, and a browser opening /docs
    or a client generator cannot send a key first; through Mangum as through uvicorn."""
    from gallop.api.gateway import asgi_handler

    app = create_app(settings.model_copy(update={"api_key_source": source}))
    anonymous = TestClient(app)
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert anonymous.get(path).status_code == 200, path
    event = load_event("apigw_get_health.json")
    event["headers"].pop("x-api-key")
    event["multiValueHeaders"].pop("x-api-key")
    event |= {"path": "/openapi.json", "resource": "/{proxy+}"}
    try:
        reply = asgi_handler(app)(event, _Context())
    finally:
        meter.clear_metrics()  # the handler would have published them; no other test sees them
    assert reply["statusCode"] == 200 and json.loads(reply["body"])["info"]["title"] == "gallop"
    assert anonymous.get("/v1/health").status_code == 401  # the routes themselves do


def test_health_with_a_key(api: TestClient) -> None:
    reply = api.get("/v1/health")
    assert reply.status_code == 200
    assert reply.json()["database"] == "ok"
    assert reply.headers["x-correlation-id"]


def test_register_is_idempotent_and_a_changed_spec_conflicts(api: TestClient) -> None:
    created = api.post("/v1/datasets", json=RACES)
    assert created.status_code == 201 and created.headers["location"] == "/v1/datasets/races"
    assert api.post("/v1/datasets", json=RACES).status_code == 200
    changed = api.post("/v1/datasets", json={**RACES, "entity": "horse_id"})
    assert changed.status_code == 409
    assert "another spec" in changed.json()["detail"]
    assert [d["name"] for d in api.get("/v1/datasets").json()["items"]] == ["races"]


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
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert problem["code"] == "validation_failed" and field in problem["detail"]
    assert field in {".".join(map(str, e["loc"])) for e in problem["errors"]}


def test_malformed_upload_body_is_422_naming_the_field(api: TestClient) -> None:
    api.post("/v1/datasets", json=RACES)
    reply = api.post("/v1/datasets/races/uploads", json={"format": "xlsx"})
    assert reply.status_code == 422
    assert "body.format" in reply.json()["detail"]
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


@pytest.mark.parametrize(
    ("body", "folder", "corrections"),
    [
        ({"mode": "append"}, "append/", False),
        ({"mode": "append", "corrections": True}, "corrections/", True),
        ({"mode": "replace"}, "", False),
    ],
)
def test_an_append_upload_lands_under_the_folder_that_says_its_mode(
    api: TestClient, body: dict, folder: str, corrections: bool
) -> None:
    # GIVEN a dataset
    api.post("/v1/datasets", json=RACES)
    # WHEN an upload asks for a mode
    reply = api.post("/v1/datasets/races/uploads", json={"format": "csv", **body})
    # THEN its presigned key is under the mode's folder, as an `aws s3 cp` there would be
    assert reply.status_code == 201
    upload = reply.json()
    assert upload["key"] == f"raw/races/{folder}{upload['upload_id']}/data.csv"
    assert upload["fields"]["key"] == upload["key"]
    mode = body["mode"]
    assert (upload["mode"], upload["corrections"]) == (mode, corrections)
    # AND its record says so, alone and in the list
    status = api.get(f"/v1/datasets/races/uploads/{upload['upload_id']}").json()
    assert (status["mode"], status["corrections"]) == (mode, corrections)
    listed = api.get("/v1/datasets/races/uploads").json()["items"]
    assert [(u["mode"], u["corrections"]) for u in listed] == [(mode, corrections)]


def test_an_upload_is_a_replace_by_default(api: TestClient) -> None:
    api.post("/v1/datasets", json=RACES)
    for body in ({}, {"format": "csv"}, None):
        upload = api.post("/v1/datasets/races/uploads", json=body).json()
        assert upload["key"] == f"raw/races/{upload['upload_id']}/data.csv"
        assert (upload["mode"], upload["corrections"]) == ("replace", False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"corrections": True}, "body.corrections"),
        ({"mode": "replace", "corrections": True}, "body.corrections"),
        ({"mode": "appendd"}, "body.mode"),
        ({"mode": "append", "corrections": "yes"}, "body.corrections"),
    ],
)
def test_corrections_without_append_or_an_unknown_mode_is_a_422_problem(
    api: TestClient, body: dict, field: str
) -> None:
    api.post("/v1/datasets", json=RACES)
    reply = api.post("/v1/datasets/races/uploads", json={"format": "csv", **body})
    assert reply.status_code == 422
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert problem["code"] == "validation_failed" and field in problem["detail"]
    assert field in {".".join(map(str, e["loc"])) for e in problem["errors"]}
    if body.get("corrections") is True:
        assert "append" in problem["detail"]
    # nothing was made: no upload waits for a file
    assert api.get("/v1/datasets/races/uploads").json()["items"] == []


def test_a_version_shows_its_lineage(api: TestClient, settings: Settings) -> None:
    # GIVEN a dataset with a version uploaded whole and one appended to it
    from gallop.metadata.db import session_scope
    from gallop.metadata.models import DatasetVersion

    api.post("/v1/datasets", json=RACES)
    engine = engine_for(settings.sqlalchemy_url)
    dataset = repo.get_dataset(engine, "races")
    lineages = {
        "v-parent": (None, None, None),
        "v-child": ("v-parent", 500, 12),
    }
    with session_scope(engine) as session:
        for version_id, (parent, added, replaced) in lineages.items():
            session.add(
                DatasetVersion(
                    dataset_id=dataset.id,
                    version_id=version_id,
                    status="VALID",
                    content_hash=version_id,
                    row_count=1000,
                    group_count=100,
                    source_key=f"raw/races/{version_id}.csv",
                    report={"errors": [], "warnings": []},
                    parent_version_id=parent,
                    rows_added=added,
                    rows_replaced=replaced,
                )
            )
    # WHEN a client asks for the appended version, and for the list
    child = api.get("/v1/datasets/races/versions/v-child").json()
    listed = api.get("/v1/datasets/races/versions").json()["items"]
    # THEN each shows what it grew from
    assert (child["parent_version_id"], child["rows_added"], child["rows_replaced"]) == (
        "v-parent",
        500,
        12,
    )
    lineage = {
        v["version_id"]: (v["parent_version_id"], v["rows_added"], v["rows_replaced"])
        for v in listed
    }
    assert lineage == lineages


def test_the_openapi_document_describes_appends(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    request = components["UploadRequest"]["properties"]
    assert request["mode"]["enum"] == ["replace", "append"] and request["mode"]["default"] == (
        "replace"
    )
    assert "append" in request["corrections"]["description"]
    for lineage in ("parent_version_id", "rows_added", "rows_replaced"):
        assert components["VersionSummary"]["properties"][lineage]["description"]
    operation = schema["paths"]["/v1/datasets/{name}/uploads"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert examples["corrections"]["value"] == {
        "format": "csv",
        "mode": "append",
        "corrections": True,
    }
    reply = operation["responses"]["201"]["content"]["application/json"]["example"]
    assert reply["mode"] == "replace" and reply["corrections"] is False
    detail = schema["paths"]["/v1/datasets/{name}/versions/{version_id}"]["get"]
    version = detail["responses"]["200"]["content"]["application/json"]["example"]
    assert version["parent_version_id"].startswith("v-") and version["rows_added"] == 1


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


def test_links_the_deployed_api_returns_resolve_on_api_gateway(
    settings: Settings, deployed_env: None, races_spec: DatasetSpec
) -> None:
    """API Gateway serves the app under its stage (/prod/v1/...), but the event's path
    leaves the stage out: a link built from the path alone would point at the host's root,
    where nothing answers."""
    from gallop.metadata import repo
    from gallop.training import runs
    from gallop.training.config import run_config

    # GIVEN a training run, and the deployed function
    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    dataset = repo.register_dataset(engine, races_spec)[0]
    run_id = "ab" * 10
    runs.start_run(
        engine,
        run_id=run_id,
        dataset_id=dataset.id,
        version_id="v-1",
        spec_hash=dataset.spec_hash,
        code_version="c0de",
        config=run_config(dataset.name, "ranking", None, {}, 0.2),
    )
    module = _load_api_function()
    # WHEN API Gateway (stage "prod") brings a GET of the run
    event = load_event("apigw_get_health.json")
    event["headers"]["x-api-key"] = event["multiValueHeaders"]["x-api-key"][0] = KEY
    event["path"] = f"/v1/training-runs/{run_id}"
    event["pathParameters"] = {"proxy": event["path"].removeprefix("/")}
    event["requestContext"]["path"] = f"/prod/v1/training-runs/{run_id}"
    reply = module.handler(event, _Context())  # type: ignore[attr-defined]
    # THEN the run's own link is the URL the client called, stage and all
    assert reply["statusCode"] == 200, reply["body"]
    assert json.loads(reply["body"])["links"]["self"] == f"/prod/v1/training-runs/{run_id}"
    # AND the docs page loads the schema from under the stage too
    event["path"] = "/docs"
    event["requestContext"]["path"] = "/prod/docs"
    docs = module.handler(event, _Context())  # type: ignore[attr-defined]
    assert docs["statusCode"] == 200 and "'/prod/openapi.json'" in docs["body"]
    # AND the schema names the stage's URL as its server, where its /v1 paths resolve
    event["path"] = "/openapi.json"
    event["requestContext"]["path"] = "/prod/openapi.json"
    document = json.loads(module.handler(event, _Context())["body"])  # type: ignore[attr-defined]
    host = event["headers"]["Host"]
    assert document["servers"] == [{"url": f"https://{host}/prod"}]


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
    import boto3
    from moto import mock_aws

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
    with mock_aws():  # where the app reads the key's name and roles
        key = boto3.client("apigateway").create_api_key(name="client-x", enabled=True)
        event["requestContext"]["identity"]["apiKeyId"] = key["id"]
        reply = module.handler(event, _Context())  # type: ignore[attr-defined]
    assert reply["statusCode"] == 200
    # AND a request that did not come through a key check is refused
    event["requestContext"]["identity"].pop("apiKeyId")
    reply = module.handler(event, _Context())  # type: ignore[attr-defined]
    assert reply["statusCode"] == 401
    assert "gateway" in json.loads(reply["body"])["detail"]
