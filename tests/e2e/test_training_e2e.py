"""Training runs in the local stack: POST a run, the jobs train in subprocesses, the model
is stored and registered, and its report opens."""

from __future__ import annotations

import json

import httpx
import pytest

from gallop import aws
from gallop.client import ApiError, GallopClient
from gallop.local.stack import LocalStack
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.sagemaker import STACK_METRICS
from tests.conftest import spec_named, unique_name
from tests.e2e.test_features_e2e import ingest

SMALL = {"num_boost_round": 20, "folds": 3}


@pytest.fixture(scope="module")
def ready_dataset(stack: LocalStack, races_spec: DatasetSpec) -> tuple[str, str]:
    """150 generated races, ingested through the stack, with their features READY."""
    assert stack.api_url is not None
    client = GallopClient(stack.api_url, stack.api_key)
    try:
        runners, _ = generate_races(150, seed=5)
        spec = spec_named(races_spec, unique_name("train"))
        version_id = ingest(client, spec, runners.to_csv(index=False).encode())
        assert client.wait_for_features(spec.name, version_id, timeout=120)["status"] == "READY"
    finally:
        client.close()
    return spec.name, version_id


def test_a_run_trains_registers_its_model_and_its_report_opens(
    stack: LocalStack, client: GallopClient, ready_dataset: tuple[str, str]
) -> None:
    dataset, version_id = ready_dataset
    # WHEN a run is posted (the newest VALID version by default)
    started = client.start_training_run(dataset, hyperparameters=SMALL)
    run_id = started["run_id"]
    assert started["status"] in ("PENDING", "RUNNING") and started["version_id"] == version_id
    assert started["links"]["self"] == f"/v1/training-runs/{run_id}"

    # THEN it trains in the background and SUCCEEDS with the stack's held-out metrics
    done = client.wait_for_training_run(run_id, timeout=600)
    assert done["status"] == "SUCCEEDED", done["reason"]
    assert done["execution"] == "local" and done["reason"] is None
    # each one printed for a metric definition SageMaker reads
    assert {name.replace("@", "_at_") for name in done["metrics"]} == set(STACK_METRICS["ranking"])
    assert 0 < done["metrics"]["ndcg@1"] <= 1

    # AND its model is registered with every artifact stored under models/{run_id}/
    model = done["model"]
    assert model["model_id"] == f"m-{run_id}" and model["task"] == "ranking"
    assert stack.settings is not None
    artifacts = Store(stack.settings.artifacts_bucket, aws.client("s3", stack.settings))
    keys = set(artifacts.list_keys(f"models/{run_id}/"))
    assert {model["onnx_key"], model["manifest_key"], model["report_key"]} <= keys
    assert model["artifact_key"] in keys and f"models/{run_id}/base_0.explain.json" in keys
    manifest = json.loads(artifacts.get_bytes(model["manifest_key"]))
    assert manifest["run_id"] == run_id and manifest["data_version"] == version_id
    assert manifest["code_version"] == done["code_version"]

    # AND its report opens from the link, as HTML naming the run
    report = httpx.get(done["report_url"], timeout=30)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<html" in report.text.lower() and run_id in report.text

    # WHEN the same run is asked for again THEN it is the same run, not trained again
    again = client.http.post(
        "/v1/training-runs", json={"dataset": dataset, "hyperparameters": SMALL}
    )
    assert again.status_code == 200 and again.json()["run_id"] == run_id


def test_a_failing_run_fails_with_the_jobs_reason_and_may_start_again(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    # GIVEN six races: the API cannot see, without loading them, that they make no 10 folds
    runners, _ = generate_races(6, seed=8)
    dataset = spec_named(races_spec, unique_name("few"))
    version_id = ingest(client, dataset, runners.to_csv(index=False).encode())
    assert client.wait_for_features(dataset.name, version_id, timeout=120)["status"] == "READY"
    bad = {"version": version_id, "bases": ["lambdarank"], "hyperparameters": {"folds": 10}}
    started = client.start_training_run(dataset.name, **bad)
    run = client.wait_for_training_run(started["run_id"], 300)
    assert run["status"] == "FAILED"
    assert "base job failed" in run["reason"] and "cannot make 10 folds" in run["reason"]
    assert run["model"] is None and run["report_url"] is None and run["metrics"] is None
    assert stack.settings is not None
    artifacts = Store(stack.settings.artifacts_bucket, aws.client("s3", stack.settings))
    assert artifacts.list_keys(f"models/{run['run_id']}/") == []

    reply = client.http.post("/v1/training-runs", json={"dataset": dataset.name, **bad})
    assert reply.status_code == 202 and reply.json()["attempt"] == 2
    assert client.wait_for_training_run(run["run_id"], 300)["status"] == "FAILED"


def test_a_run_on_an_unknown_version_is_404(
    client: GallopClient, ready_dataset: tuple[str, str]
) -> None:
    with pytest.raises(ApiError) as caught:
        client.start_training_run(ready_dataset[0], version="v-0000")
    assert caught.value.status_code == 404
