"""A client generated from the running API's /openapi.json (openapi-python-client) handles
every answer the document lists: each documented status of each route is provoked on the
local stack, and the generated client parses it into its typed model (never None, never a
raise); every error is application/problem+json.

Not provoked here, and checked where they can be: 429 (API Gateway's throttling:
tests/infra/test_infra.py asserts its problem body), 500 (test_an_unhandled_error_is_a_problem
below), and 422 of health, which takes no input.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from gallop import aws
from gallop.api.app import create_app
from gallop.api.openapi import EVERYWHERE
from gallop.api.problems import MEDIA_TYPE
from gallop.client import GallopClient
from gallop.layout import serving_key
from gallop.local.stack import LocalStack
from gallop.metadata import repo
from gallop.metadata.db import engine_for, session_scope
from gallop.metadata.models import RegisteredModel
from gallop.renewal import approvals
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from gallop.training import runs
from gallop.training.config import run_config
from tests.conftest import READER, registered_model, spec_named, unique_name

PACKAGE = "gallop_api_client"
SMALL = {"bases": ["lambdarank"], "hyperparameters": {"num_boost_round": 10, "folds": 2}}
UNPROVOKED = {("health", 422)} | {(None, 429), (None, 500)}
# the monitor function failing, busy or slow: only on AWS (tests/integration/test_monitoring_api.py)
UNPROVOKED |= {("check_now", 502), ("check_now", 503), ("check_now", 504)}


# -- the generated client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The client openapi-python-client generates from the stack's /openapi.json."""
    assert stack.api_url is not None
    out = tmp_path_factory.mktemp("generated")
    document = httpx.get(f"{stack.api_url}/openapi.json", timeout=30).json()
    (out / "openapi.json").write_text(json.dumps(document))
    config = f"package_name_override: {PACKAGE}\npost_hooks: []\n"
    (out / "config.yml").write_text(config)
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is in the dev extra"
    subprocess.run(
        [tool, "generate", "--path", "openapi.json", "--config", "config.yml"]
        + ["--meta", "none", "--output-path", PACKAGE],
        cwd=out,
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE), document
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


# -- what the routes need: a dataset with a model, a run to cancel, a model whose files
# are gone, unclaimed files -------------------------------------------------------------


@pytest.fixture(scope="module")
def world(stack: LocalStack, races_spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    assert stack.api_url is not None and stack.settings is not None
    client = GallopClient(stack.api_url, stack.api_key)
    engine = engine_for(stack.settings.sqlalchemy_url)
    spec = spec_named(races_spec, unique_name("gen"))
    runners, _ = generate_races(40, seed=5)
    last = runners[runners["race_id"] == runners["race_id"].iloc[-1]]  # held back: a card
    history = runners.drop(last.index).to_csv(index=False).encode()
    client.register_dataset(spec)
    upload_id = client.upload_bytes(spec.name, history, "csv")
    upload = client.wait_for_upload(spec.name, upload_id, timeout=60)
    version_id = upload["version_id"]
    assert client.wait_for_features(spec.name, version_id, timeout=120)["status"] == "READY"
    run = client.start_training_run(spec.name, **SMALL)
    done = client.wait_for_training_run(run["run_id"], timeout=300)
    assert done["status"] == "SUCCEEDED", done["reason"]
    pre_race = last.drop(columns=["position", "finish_time_s"], errors="ignore")
    card = json.loads(pre_race.to_json(orient="records"))
    yield {
        "spec": spec,
        "version_id": version_id,
        "upload_id": upload_id,
        "run_id": done["run_id"],
        "model_id": done["model"]["model_id"],
        "card": card,
        "gone": _model_without_files(engine, spec.name),
        "twin": _twin(engine, done["run_id"]),
        "engine": engine,
        "client": client,
    }
    client.close()


def _model_without_files(engine: Engine, dataset: str) -> str:
    """A registered model whose files are not in the bucket: it cannot answer (409)."""
    found = repo.get_dataset(engine, dataset)
    extra = {"features": [], "base_models": []}
    return registered_model(engine, found, "cd" * 10, version="v-gone", manifest=extra)


def _twin(engine: Engine, trained_run: str) -> str:
    """Another registered model of the run's model's dataset with the model's files."""
    found = runs.find_model(engine, trained_run)
    assert found is not None
    dataset = repo.get_dataset(engine, found.manifest["dataset"])
    run_id = "ef" * 10
    runs.start_run(
        engine,
        run_id=run_id,
        dataset_id=dataset.id,
        version_id="v-twin",
        spec_hash=dataset.spec_hash,
        code_version="c0de",
        config=run_config(dataset.name, "ranking", None, {}, 0.2),
    )
    twin = runs.model_id_for(run_id)
    fields = ("task", "artifact_key", "onnx_key", "manifest_key", "report_key", "manifest")
    with session_scope(engine) as session:
        session.add(
            RegisteredModel(
                model_id=twin,
                run_id=run_id,
                dataset_id=dataset.id,
                **{f: getattr(found, f) for f in fields},
            )
        )
    return twin


def _unclaimed(stack: LocalStack, world: dict[str, Any], key: str) -> str:
    """Copy a file under raw/ that no dataset claims; its unclaimed record's id."""
    assert stack.settings is not None
    s3 = aws.client("s3", stack.settings)
    s3.put_object(Bucket=stack.settings.data_bucket, Key=key, Body=b"a,b\n1,2\n")
    client: GallopClient = world["client"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [u["id"] for u in client.unclaimed() if u["key"] == key]
        if found:
            return str(found[0])
        time.sleep(0.1)
    raise AssertionError(f"{key} was not kept as unclaimed")


# -- every documented status ---------------------------------------------------------------


def test_every_documented_status_of_every_route_parses_in_the_generated_client(
    stack: LocalStack, generated: tuple[Any, dict[str, Any]], world: dict[str, Any]
) -> None:
    package, document = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    keyed = package.AuthenticatedClient(
        base_url=stack.api_url,
        token=stack.api_key,
        prefix="",
        auth_header_name="x-api-key",
        timeout=httpx.Timeout(60),
    )
    anonymous = package.AuthenticatedClient(
        base_url=stack.api_url, token="", prefix="", auth_header_name="x-api-key"
    )
    reader = package.AuthenticatedClient(
        base_url=stack.api_url,
        token=stack.api_keys[READER],
        prefix="",
        auth_header_name="x-api-key",
    )
    operations = {
        operation["operationId"]: (operation["tags"][0], operation)
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    seen: set[tuple[str, int]] = set()

    def call(name: str, status: int, *args: Any, client: Any = keyed, **kwargs: Any) -> Any:
        tag, operation = operations[name]
        module = importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")
        reply = module.sync_detailed(*args, client=client, **kwargs)
        where = f"{name} {status}"
        assert reply.status_code == status, (where, reply.content[:300])
        assert reply.parsed is not None, where  # documented, so parsed
        if status >= 400:
            assert reply.headers["content-type"] == MEDIA_TYPE, where
            assert isinstance(reply.parsed, models.Problem), where
            assert (reply.parsed.status, reply.parsed.code) == (status, reply.parsed.code)
        else:
            assert not isinstance(reply.parsed, models.Problem), where
        seen.add((name, status))
        return reply.parsed

    spec: DatasetSpec = world["spec"]
    name, version_id, run_id = spec.name, world["version_id"], world["run_id"]
    model_id, gone = world["model_id"], world["gone"]
    too_big = "x" * (stack.settings.max_body_bytes + 1)  # type: ignore[union-attr]
    rows_too_big = "x" * (stack.settings.max_rows_body_bytes + 1)  # type: ignore[union-attr]

    def body(kind: str, /, **fields: Any) -> Any:
        return getattr(models, kind).from_dict(fields)

    # health
    call("health", 200)
    # datasets
    other = spec_named(spec, unique_name("gen")).model_dump(mode="json")
    call("register_dataset", 201, body=body("DatasetSpec", **other))
    call("register_dataset", 200, body=body("DatasetSpec", **other))
    changed = other | {"features": other["features"][:-1]}
    call("register_dataset", 409, body=body("DatasetSpec", **changed))
    call("register_dataset", 422, body=body("DatasetSpec", **other | {"name": "Bad Name!"}))
    call("register_dataset", 413, body=body("DatasetSpec", **other | {"name": too_big}))
    call("list_datasets", 200, limit=1)
    call("list_datasets", 422, limit=0)
    call("get_dataset", 200, name)
    call("get_dataset", 404, "nope")
    call("get_dataset", 422, "Bad Name!")
    upload_body = body("UploadRequest", format="csv")
    created = call("create_upload", 201, name, body=upload_body)
    assert created.upload_id
    call("create_upload", 404, "nope", body=upload_body)
    call("create_upload", 422, "Bad Name!", body=upload_body)
    call("create_upload", 413, name, body=body("UploadRequest", format="csv", pad=too_big))
    call("list_uploads", 200, name, limit=1)
    call("list_uploads", 404, "nope")
    call("list_uploads", 422, name, cursor="garbage")
    call("get_upload", 200, name, world["upload_id"])
    call("get_upload", 404, name, "nope")
    call("get_upload", 422, name, "a" * 65)
    call("list_versions", 200, name)
    call("list_versions", 404, "nope")
    call("list_versions", 422, name, limit=501)
    call("get_version", 200, name, version_id)
    call("get_version", 404, name, "v-nope")
    call("get_version", 422, name, "a" * 65)
    call("list_feature_sets", 200, name, version_id)
    call("list_feature_sets", 404, name, "v-nope")
    call("list_feature_sets", 422, name, version_id, limit=0)
    card = body("CardRequest", rows=world["card"])
    call("card_feature_rows", 200, name, version_id, body=card)
    call("card_feature_rows", 404, name, "v-nope", body=card)
    broken = [dict(world["card"][0], odds="many")] + world["card"][1:]
    call("card_feature_rows", 422, name, version_id, body=body("CardRequest", rows=broken))
    big_card = body("CardRequest", rows=[{"pad": rows_too_big}])
    call("card_feature_rows", 413, name, version_id, body=big_card)
    # uploads no dataset claims
    never = _unclaimed(stack, world, f"raw/{unique_name('orphan')}.csv")
    later = unique_name("later")
    waiting = _unclaimed(stack, world, f"raw/{later}/races.csv")
    call("list_unclaimed", 200, limit=500)
    call("list_unclaimed", 422, cursor="garbage")
    call("retry_unclaimed", 409, never)
    call("retry_unclaimed", 404, "nope")
    call("retry_unclaimed", 422, "a" * 65)
    repo.register_dataset(world["engine"], spec_named(spec, later))  # not claimed yet
    call("retry_unclaimed", 202, waiting)
    # training runs
    run_body = body("TrainingRunRequest", dataset=name, **SMALL)
    call("start_training_run", 200, body=run_body)
    call("start_training_run", 404, body=body("TrainingRunRequest", dataset="nope"))
    call("start_training_run", 409, body=body("TrainingRunRequest", dataset=later))
    call("start_training_run", 422, body=body("TrainingRunRequest", dataset=name, test_share=2))
    call("start_training_run", 413, body=body("TrainingRunRequest", dataset=too_big))
    slow = body("TrainingRunRequest", dataset=name, hyperparameters={"num_boost_round": 5000})
    started = call("start_training_run", 202, body=slow)
    call("cancel_training_run", 202, started.run_id)
    call("cancel_training_run", 409, started.run_id)
    call("cancel_training_run", 404, "ab" * 10)
    call("cancel_training_run", 422, "not-hex")
    call("list_training_runs", 200, dataset=name, limit=1)
    call("list_training_runs", 404, dataset="nope")
    call("list_training_runs", 422, limit=0)
    call("get_training_run", 200, run_id)
    call("get_training_run", 404, "ab" * 10)
    call("get_training_run", 422, "not-hex")
    # models
    call("list_models", 200, dataset=name)
    call("list_models", 404, dataset="nope")
    call("list_models", 422, limit=0)
    call("get_model", 200, model_id)
    call("get_model", 404, "m-nope")
    call("get_model", 422, "m-" + "a" * 80)
    call("promote", 200, model_id, body=body("PromoteBody", alias="challenger"))
    call("promote", 404, "m-nope", body=body("PromoteBody", alias="challenger"))
    call("promote", 409, gone, body=body("PromoteBody", alias="challenger"))
    call("promote", 422, "m-" + "a" * 80, body=body("PromoteBody", alias="challenger"))
    call("promote", 413, model_id, body=body("PromoteBody", alias="challenger", pad=too_big))
    # a dataset's aliases and policies: a twin of the model (its files) makes a champion
    # before the model's, to roll back to
    call("promote", 200, world["twin"], body=body("PromoteBody", alias="champion"))
    call("promote", 200, model_id, body=body("PromoteBody", alias="champion", reason="newer"))
    call("get_aliases", 200, name)
    call("get_aliases", 404, "nope")
    call("get_aliases", 422, "Bad Name!")
    call("alias_history", 200, name, limit=1)
    call("alias_history", 404, "nope")
    call("alias_history", 422, name, cursor="garbage")
    call("rollback_champion", 200, name, body=body("RollbackBody", reason="worse"))
    call("rollback_champion", 409, name, body=body("RollbackBody"))
    call("rollback_champion", 404, "nope", body=body("RollbackBody"))
    call("rollback_champion", 422, "Bad Name!", body=body("RollbackBody"))
    call("rollback_champion", 413, name, body=body("RollbackBody", pad=too_big))
    call("promote", 200, model_id, body=body("PromoteBody", alias="champion"))
    split = body("TrafficBody", mode="split", challenger_share=0.05)
    call("put_traffic", 200, name, body=split)
    call("put_traffic", 404, "nope", body=split)
    call("put_traffic", 422, name, body=body("TrafficBody", mode="split", challenger_share=2))
    call("put_traffic", 413, name, body=body("TrafficBody", mode="champion", pad=too_big))
    call("put_traffic", 200, name, body=body("TrafficBody", mode="champion"))
    call("get_traffic", 200, name)
    call("get_traffic", 404, "nope")
    call("get_traffic", 422, "Bad Name!")
    daily = body("RetrainingBody", every_hours=24)
    call("put_retraining", 200, name, body=daily)
    call("put_retraining", 404, "nope", body=daily)
    call("put_retraining", 422, name, body=body("RetrainingBody", every_hours=-1))
    call("put_retraining", 413, name, body=body("RetrainingBody", pad=too_big))
    call("get_retraining", 200, name)
    call("get_retraining", 404, "nope")
    call("get_retraining", 422, "Bad Name!")
    # the comparison and approval requests: the twin challenges the model
    call("promote", 200, world["twin"], body=body("PromoteBody", alias="challenger"))
    call("get_challenger", 200, name)
    call("get_challenger", 404, "nope")
    call("get_challenger", 422, "Bad Name!")
    dataset = repo.get_dataset(world["engine"], name)
    compared = {"dataset": name, "champion": model_id, "challenger": world["twin"]}
    opened = approvals.open_approval(
        world["engine"], stack.settings, dataset.id, compared | {"recommendation": "promote"}
    )
    assert opened is not None
    call("list_approvals", 200, dataset=name)
    call("list_approvals", 404, dataset="nope")
    call("list_approvals", 422, limit=0)
    call("get_approval", 200, opened.approval_id)
    call("get_approval", 404, "ap-" + "0" * 20)
    call("get_approval", 422, "nope")
    approve = body("Decision", decision="approve")
    call("decide_approval", 200, opened.approval_id, body=approve)
    call("decide_approval", 409, opened.approval_id, body=approve)
    call("decide_approval", 404, "ap-" + "0" * 20, body=approve)
    call("decide_approval", 422, "nope", body=approve)
    call(
        "decide_approval",
        413,
        opened.approval_id,
        body=body("Decision", decision="approve", pad=too_big),
    )
    call("promote", 200, model_id, body=body("PromoteBody", alias="champion"))
    # monitoring
    call("get_monitoring", 200, model_id)
    call("get_monitoring", 404, "m-nope")
    call("get_monitoring", 422, "m-" + "a" * 80)
    call("check_now", 200, body=body("CheckBody", dataset=name))
    call("check_now", 404, body=body("CheckBody", dataset="nope"))
    call("check_now", 422, body=body("CheckBody", dataset="Bad Name!"))
    call("check_now", 413, body=body("CheckBody", dataset=name, pad=too_big))
    # predictions and explanations
    assert stack.settings is not None
    garbled = {"Bucket": stack.settings.artifacts_bucket, "Key": serving_key(name)}
    aws.client("s3", stack.settings).put_object(**garbled, Body=b"{}")  # names no model
    for route, kind in (("predict", "PredictPredictBody"), ("explain", "ExplainExplainBody")):
        call(route, 200, body=body(kind, model=model_id, rows=world["card"]))
        call(route, 404, body=body(kind, model=gone, rows=world["card"]))
        call(route, 409, body=body(kind, dataset=name, model="champion", rows=world["card"]))
        call(route, 422, body=body(kind, model=model_id, rows=broken))
        call(route, 413, body=body(kind, model=model_id, rows=[{"pad": rows_too_big}]))
    # and every route without a key, and each that needs more than reading with a reader's
    for operation_id, (_, operation) in operations.items():
        args = _any_arguments(operation, body, name, model_id, world)
        call(operation_id, 401, *args["path"], client=anonymous, **args["named"])
        if "403" in operation["responses"]:
            call(operation_id, 403, *args["path"], client=reader, **args["named"])

    documented = {
        (operation_id, int(status))
        for operation_id, (_, operation) in operations.items()
        for status in operation["responses"]
    }
    left = {
        (operation_id, status)
        for operation_id, status in documented - seen
        if (operation_id, status) not in UNPROVOKED and (None, status) not in UNPROVOKED
    }
    assert not left, sorted(left)


def _any_arguments(
    operation: dict[str, Any],
    body: Callable[..., Any],
    name: str,
    model_id: str,
    world: dict[str, Any],
) -> dict[str, Any]:
    """Arguments of the right types for an operation (refused before they are read)."""
    path = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
    values = {"name": name, "model_id": model_id, "run_id": world["run_id"]}
    values |= {"version_id": world["version_id"], "upload_id": world["upload_id"]}
    values |= {"unclaimed_id": "nope", "approval_id": "ap-" + "0" * 20}
    named: dict[str, Any] = {}
    if "requestBody" in operation:
        kind, fields = _BODIES[operation["operationId"]]
        named["body"] = body(kind, **fields(name, world))
    return {"path": [values[p] for p in path], "named": named}


# operation id -> (the generated body class, its fields)
_BODIES: dict[str, tuple[str, Callable[[str, dict[str, Any]], dict[str, Any]]]] = {
    "register_dataset": ("DatasetSpec", lambda name, w: w["spec"].model_dump(mode="json")),
    "create_upload": ("UploadRequest", lambda name, w: {"format": "csv"}),
    "card_feature_rows": ("CardRequest", lambda name, w: {"rows": w["card"]}),
    "start_training_run": ("TrainingRunRequest", lambda name, w: {"dataset": name}),
    "promote": ("PromoteBody", lambda name, w: {"alias": "challenger"}),
    "rollback_champion": ("RollbackBody", lambda name, w: {}),
    "put_traffic": ("TrafficBody", lambda name, w: {"mode": "champion"}),
    "put_retraining": ("RetrainingBody", lambda name, w: {}),
    "check_now": ("CheckBody", lambda name, w: {"dataset": name}),
    "decide_approval": ("Decision", lambda name, w: {"decision": "approve"}),
    "predict": ("PredictPredictBody", lambda name, w: {"rows": w["card"]}),
    "explain": ("ExplainExplainBody", lambda name, w: {"rows": w["card"]}),
}


# -- the document itself ---------------------------------------------------------------------


def test_every_route_documents_its_errors_and_an_example_of_each_answer(
    tmp_path: Path,
) -> None:
    document = create_app(Settings(state_dir=tmp_path, api_keys="k")).openapi()
    assert document["components"]["securitySchemes"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            where = f"{method.upper()} {path}"
            responses = {int(s): r for s, r in operation["responses"].items()}
            assert operation.get("security"), where  # every route wants a key
            assert set(EVERYWHERE) <= set(responses), where
            assert any(200 <= s < 300 for s in responses), where
            for status, response in responses.items():
                (media, content), *_ = response["content"].items()
                assert content["schema"] and "example" in content, (where, status)
                if status >= 400:
                    assert media == MEDIA_TYPE, (where, status)
                    assert content["example"]["status"] == status, (where, status)


def test_an_unhandled_error_is_a_problem_without_its_trace(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path, api_keys="k"))

    @app.get("/v1/broken")
    def broken() -> None:
        raise RuntimeError("secret internals")

    reply = TestClient(app, raise_server_exceptions=False).get(
        "/v1/broken", headers={"x-api-key": "k"}
    )
    assert reply.status_code == 500
    assert reply.headers["content-type"] == MEDIA_TYPE
    assert reply.json()["code"] == "internal_error"
    assert "secret" not in reply.text and "Traceback" not in reply.text
