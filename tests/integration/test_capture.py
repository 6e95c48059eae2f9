"""Prediction capture through the local stack: the predict function's direct path answers,
the sender thread sends to the local Firehose (moto, partitioned as AWS partitions), and
the rows land under capture/{dataset}/{model}/date=YYYY-MM-DD/ in the data bucket. An
outage (the endpoint unreachable, the stream deleted) leaves every prediction answered,
and is counted, in the totals and on the EMF line."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gallop import aws
from gallop.layout import MANIFEST_FILE, ONNX_FILE, capture_prefix, model_prefix
from gallop.local.provision import create_capture_stream
from gallop.local.stack import LocalStack, free_port
from gallop.monitoring.capture import Capture, firehose_client, read_captured, sampled
from gallop.storage import Store

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["x0", "x1", "going"]
GOING = ["firm", "good", "soft"]


def linear_ranker_files(coef: list[float], dataset: str) -> dict[str, bytes]:
    """A served ranking model's files: one linear base over x0, x1 and a categorical
    `going`, grouped by race, with runner ids (as a trained model's manifest has them)."""
    from gallop.models.linear import LinearModel
    from gallop.models.onnx_export import stack_to_onnx

    n = len(coef)
    wide = np.full(n, 3e38)
    line = LinearModel(np.zeros(n), np.ones(n), np.array(coef), 0.0, -wide, wide)
    graph = stack_to_onnx([line], [1.0], 0.0, n).SerializeToString()
    manifest = {
        "task": "ranking",
        "features": FEATURES,
        "categorical": {"going": GOING},
        "group": "race",
        "identifiers": ["race", "time", "runner"],
        "dataset": dataset,
        "onnx_input": "features",
        "onnx_outputs": ["score", "margins"],
    }
    return {ONNX_FILE: graph, MANIFEST_FILE: json.dumps(manifest).encode()}


@pytest.fixture(scope="module")
def model(stack: LocalStack) -> dict[str, str]:
    """A model published in the artifacts bucket as training publishes one."""
    assert stack.settings is not None
    run_id = uuid.uuid4().hex[:16]
    dataset = f"cap-{run_id[:6]}"
    artifacts = Store.artifacts_from_settings(stack.settings)
    for name, data in linear_ranker_files([1.0, -0.5, 0.25], dataset).items():
        artifacts.put_bytes(model_prefix(run_id) + name, data, "application/octet-stream")
    return {"model_id": f"m-{run_id}", "dataset": dataset}


def race(race_id: str, runners: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "race": race_id,
            "runner": f"h{i}",
            "x0": round(float(rng.normal()), 4),
            "x1": None if i == 1 else round(float(rng.normal()), 4),  # a missing value
            "going": GOING[i % 3] if i < 3 else "heavy",  # "heavy": unseen, missing
        }
        for i in range(runners)
    ]


def gateway_event(body: dict[str, Any], key: str, request_id: str) -> dict[str, Any]:
    event = json.loads((ROOT / "tests" / "events" / "apigw_get_health.json").read_text())
    event |= {
        "resource": "/v1/predict",
        "path": "/v1/predict",
        "httpMethod": "POST",
        "headers": {"content-type": "application/json", "x-api-key": key},
        "multiValueHeaders": {},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }
    event["requestContext"] |= {"requestId": request_id, "httpMethod": "POST"}
    return event


def predict_app(stack: LocalStack, capture: Capture | None) -> Any:
    """The predict function's app, with the given capture (None: capture off)."""
    from gallop.api.serving import create_predict_app

    assert stack.settings is not None
    app = create_predict_app(stack.settings)
    app.state.capture = capture
    return app


def capture_to(stack: LocalStack, stream: str, **options: Any) -> tuple[Capture, io.StringIO]:
    assert stack.settings is not None
    settings = stack.settings
    out = io.StringIO()
    return Capture(stream, lambda: firehose_client(settings), out=out, **options), out


def new_stream(stack: LocalStack) -> str:
    assert stack.settings is not None
    name = f"capture-{uuid.uuid4().hex[:8]}"
    create_capture_stream(aws.client("firehose", stack.settings), name, stack.settings.data_bucket)
    return name


def ask(app: Any, body: dict[str, Any], key: str, request_id: str) -> dict[str, Any]:
    from gallop.api.serving import answer_event

    reply = answer_event(app.state, gateway_event(body, key, request_id))
    assert reply is not None
    assert reply["statusCode"] == 200, reply["body"]
    return dict(json.loads(reply["body"]))


def as_float32(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def emf_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


def summed(lines: list[dict[str, Any]], name: str) -> float:
    return sum(line.get(name, 0) for line in lines)


def test_predictions_are_captured_under_dataset_model_and_day(
    stack: LocalStack, model: dict[str, str]
) -> None:
    # GIVEN the predict function capturing to a stream configured as the stack configures it
    capture, out = capture_to(stack, new_stream(stack))
    app = predict_app(stack, capture)
    rows = race("r-1") + race("r-2", seed=1)
    # WHEN two races are predicted, as rows and as columns + data, by alias-free model id
    first = ask(app, {"model": model["model_id"], "rows": rows[:4]}, stack.api_key, "req-a")
    columns = list(rows[0])
    data = [[r[c] for c in columns] for r in rows[4:]]
    second = ask(
        app, {"model": model["model_id"], "columns": columns, "data": data}, stack.api_key, "req-b"
    )
    assert capture.flush(timeout=30)
    # THEN each row is one record under the model's day folder, as the model saw it
    assert stack.settings is not None
    store = Store.from_settings(stack.settings)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    keys = store.list_keys(capture_prefix(model["dataset"], model["model_id"]))
    assert keys and all(
        k.startswith(capture_prefix(model["dataset"], model["model_id"], today)) for k in keys
    )
    records = [json.loads(line) for k in keys for line in store.get_bytes(k).decode().splitlines()]
    by_request = {(r["request_id"], r["row"]): r for r in records}
    assert len(records) == 8
    served = first["predictions"] + second["predictions"]
    for i, (sent, prediction) in enumerate(zip(rows, served, strict=True)):
        record = by_request[("req-a" if i < 4 else "req-b", i % 4)]
        going = GOING.index(sent["going"]) if sent["going"] in GOING else None
        # float32 as the model saw them (written in float32's shortest digits), null for
        # a missing value and for a category the model never saw
        expected = [sent["x0"], sent["x1"], going]
        assert [v is None for v in record["features"]] == [v is None for v in expected]
        np.testing.assert_array_equal(as_float32(record["features"]), as_float32(expected))
        assert record["outputs"] == prediction
        assert record["group"] == sent["race"] and record["entity"] == sent["runner"]
        assert record["categories"] == {"going": sent["going"]}
        assert record | {"at": None} == record | {
            "v": 1,
            "at": None,
            "dataset": model["dataset"],
            "model_id": model["model_id"],
            "alias": None,
            "task": "ranking",
            "shadow": False,
            "features_as_of": None,
        }
    # AND the reader gives them back as arrays
    captured = read_captured(store, model["dataset"], model["model_id"], since_day=today)
    assert len(captured) == 8 and captured.features.shape == (8, 3)
    assert captured.features.dtype == np.float32 and np.isnan(captured.features[1, 1])
    assert sorted(captured.score.tolist()) == sorted(p["score"] for p in served)
    assert set(captured.outputs) >= {"score", "win_probability", "place_probability", "rank"}
    assert captured.at.dtype == np.dtype("datetime64[us]")
    assert (
        len(read_captured(store, model["dataset"], model["model_id"], since_day="2999-01-01")) == 0
    )
    # AND the counts went out as an EMF line per dataset and model
    lines = emf_lines(out)
    assert summed(lines, "CapturedRows") == 8 and summed(lines, "CaptureFailures") == 0
    line = lines[0]
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "gallop"
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["service"],
        ["service", "dataset", "model"],
    ]
    assert (line["service"], line["dataset"], line["model"]) == (
        "gallop-predict",
        model["dataset"],
        model["model_id"],
    )


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_the_sample_share_captures_whole_races_or_none(
    stack: LocalStack, model: dict[str, str], share: float
) -> None:
    stream = new_stream(stack)
    capture, _ = capture_to(stack, stream, sample=share)
    app = predict_app(stack, capture)
    # 30 requests of one race, and one of two races (decided by its first race)
    races = [f"s-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    for i, race_id in enumerate(races):
        ask(app, {"model": model["model_id"], "rows": race(race_id)}, stack.api_key, f"q{i}")
    pair = race(races[0] + "-x") + race(races[0] + "-y")
    ask(app, {"model": model["model_id"], "rows": pair}, stack.api_key, "pair")
    assert capture.flush(timeout=30)
    assert stack.settings is not None
    captured = read_captured(
        Store.from_settings(stack.settings), model["dataset"], model["model_id"]
    )
    mine = [g for g in captured.group if g in set(races) | {races[0] + "-x", races[0] + "-y"}]
    rows_per_race: dict[str, int] = {}
    for group in mine:
        rows_per_race[group] = rows_per_race.get(group, 0) + 1
    expected = {r for r in races if sampled(r, share)}
    if sampled(races[0] + "-x", share):
        expected |= {races[0] + "-x", races[0] + "-y"}
    assert set(rows_per_race) == expected
    assert all(n == 4 for n in rows_per_race.values())  # whole races
    if share == 0.0:
        assert capture.totals.captured == 0
    else:
        assert 0 < len(expected) < 32  # some captured, some not (a fixed hash of random ids)


def test_an_unreachable_firehose_answers_every_prediction_and_counts_the_failures(
    stack: LocalStack, model: dict[str, str]
) -> None:
    # GIVEN predictions answered without capture, as the reference
    assert stack.settings is not None
    rows = race("out-1", runners=6, seed=4)
    body = {"model": model["model_id"], "rows": rows}
    plain = ask(predict_app(stack, None), body, stack.api_key, "plain")
    # AND capture to a Firehose endpoint nothing listens on
    closed = stack.settings.model_copy(
        update={"aws_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    out = io.StringIO()
    capture = Capture("gallop-capture", lambda: firehose_client(closed), out=out)
    app = predict_app(stack, capture)
    # WHEN five requests are answered
    replies = [ask(app, body, stack.api_key, f"o{i}") for i in range(5)]
    assert capture.flush(timeout=60)
    # THEN each is answered as without capture, and all 30 rows are counted as failed
    assert all(reply == plain for reply in replies)
    assert (capture.totals.captured, capture.totals.failures) == (0, 30)
    lines = emf_lines(out)
    assert summed(lines, "CaptureFailures") == 30 and summed(lines, "CapturedRows") == 0
    assert {line["model"] for line in lines} == {model["model_id"]}


def test_a_deleted_stream_answers_every_prediction_and_counts_the_failures(
    stack: LocalStack, model: dict[str, str]
) -> None:
    assert stack.settings is not None
    stream = new_stream(stack)
    capture, out = capture_to(stack, stream)
    app = predict_app(stack, capture)
    body = {"model": model["model_id"], "rows": race("del-1", seed=5)}
    before = ask(app, body, stack.api_key, "d0")
    assert capture.flush(timeout=30) and capture.totals.captured == 4
    # WHEN the stream is deleted under a running capture
    aws.client("firehose", stack.settings).delete_delivery_stream(DeliveryStreamName=stream)
    after = [ask(app, body, stack.api_key, f"d{i}") for i in range(1, 4)]
    assert capture.flush(timeout=30)
    # THEN every request is answered alike, and the 12 rows are counted as failures
    assert all(reply == before for reply in after)
    assert (capture.totals.captured, capture.totals.failures) == (4, 12)
    assert summed(emf_lines(out), "CaptureFailures") == 12


def test_the_served_api_captures_by_default(stack: LocalStack, model: dict[str, str]) -> None:
    """`gallop serve` (the local stack's API) names the local capture stream by default."""
    assert stack.settings is not None and stack.api_url is not None
    assert stack.settings.capture_stream
    race_id = f"api-{uuid.uuid4().hex[:8]}"
    reply = httpx.post(
        stack.api_url + "/v1/predict",
        json={"model": model["model_id"], "rows": race(race_id)},
        headers={"x-api-key": stack.api_key, "x-correlation-id": f"corr-{race_id}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    store = Store.from_settings(stack.settings)
    deadline = time.monotonic() + 30  # the API's sender thread sends on its own
    captured = read_captured(store, model["dataset"], model["model_id"])
    while race_id not in set(captured.group) and time.monotonic() < deadline:
        time.sleep(0.1)
        captured = read_captured(store, model["dataset"], model["model_id"])
    mine = captured.request_id[captured.group == race_id]
    assert mine.tolist() == [f"corr-{race_id}"] * 4


@pytest.fixture(scope="module")
def card_model(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model over a generated dataset's features, its entity snapshot published as the
    features service publishes one (online pointer), and a card for the next race."""
    import pandas as pd

    from gallop.cli.features import canonical
    from gallop.features.build import build_features
    from gallop.features.pointer import Pointer, iso_time
    from gallop.layout import SNAPSHOT_FILE, features_prefix, online_snapshot_key
    from gallop.serving.card import card_from_rows
    from gallop.spec import load_spec
    from gallop.synth.races import write_races

    assert stack.settings is not None
    spec = load_spec(ROOT / "shared" / "gallop" / "specs" / "races.yaml")
    spec = spec.model_copy(update={"name": f"card-{uuid.uuid4().hex[:6]}"})
    data, _ = write_races(80, seed=11, out=tmp_path_factory.mktemp("card") / "races.csv")
    table, problems = canonical(str(data), None, spec)
    assert table is not None, problems
    built = build_features(table, spec)
    version = "v-card"
    store, artifacts = (
        Store.from_settings(stack.settings),
        Store.artifacts_from_settings(stack.settings),
    )
    key = features_prefix(spec.name, version, built.plan.spec_hash) + SNAPSHOT_FILE
    store.put_bytes(key, built.state.to_bytes(), "application/octet-stream")
    end = built.state.meta["data_end"]
    pointer = Pointer(spec.name, built.plan.spec_hash, version, key, iso_time(end), end)
    store.put_json(online_snapshot_key(spec.name, built.plan.spec_hash), pointer.to_json())
    files = linear_ranker_files([0.01] * len(built.plan.features), spec.name)
    manifest = json.loads(files[MANIFEST_FILE])
    manifest |= {
        "features": built.plan.features,
        "categorical": built.state.meta["categories"],
        "group": spec.group,
        "identifiers": [spec.group, spec.time, spec.entity],
        "feature_spec_hash": built.plan.spec_hash,
        "data_version": version,
    }
    files[MANIFEST_FILE] = json.dumps(manifest).encode()
    run_id = uuid.uuid4().hex[:16]
    for name, body in files.items():
        artifacts.put_bytes(model_prefix(run_id) + name, body, "application/octet-stream")
    raw = pd.read_csv(data)
    last = raw[raw[spec.group] == raw[spec.group].iloc[-1]].copy()
    last[spec.group] = "card-race"
    last[spec.time] = (pd.Timestamp(end, unit="us", tz="UTC") + pd.Timedelta(days=1)).isoformat()
    return {
        "model_id": f"m-{run_id}",
        "dataset": spec.name,
        "version": version,
        "card": card_from_rows(last, spec),
        "entity": spec.entity,
    }


def test_a_race_card_is_captured_as_completed(
    stack: LocalStack, card_model: dict[str, Any]
) -> None:
    from gallop.api.serving import _completed, model_cache

    # GIVEN a race card (ids and pre-race fields), completed from the online snapshot
    capture, _ = capture_to(stack, new_stream(stack))
    app = predict_app(stack, capture)
    card = card_model["card"]
    reply = ask(app, {"model": card_model["model_id"], "rows": card}, stack.api_key, "card-1")
    assert capture.flush(timeout=30)
    # THEN each runner's record holds the completed features the model saw and its answer
    assert stack.settings is not None
    store = Store.from_settings(stack.settings)
    captured = read_captured(store, card_model["dataset"], card_model["model_id"])
    model = model_cache(app.state).resolve(card_model["model_id"])
    columns = list(card[0])
    seen, _, as_of = _completed(
        app.state, model, columns, [[r[c] for c in columns] for r in card], "online"
    )
    assert len(captured) == len(card) and as_of["version_id"] == card_model["version"]
    rows = [json.loads(line) for k in captured.keys for line in store.get_bytes(k).splitlines()]
    rows.sort(key=lambda r: r["row"])
    np.testing.assert_array_equal(np.stack([as_float32(r["features"]) for r in rows]), seen)
    assert [r["outputs"] for r in rows] == reply["predictions"]
    assert {r["features_as_of"] for r in rows} == {card_model["version"]}
    assert {r["group"] for r in rows} == {"card-race"}
    assert [r["entity"] for r in rows] == [str(r[card_model["entity"]]) for r in card]
    for sent, row in zip(card, rows, strict=True):  # categories: the card's text, as sent
        assert row["categories"] == {
            name: None if sent.get(name) is None else str(sent[name]) for name in row["categories"]
        }
        assert row["categories"]  # the generated races have categorical features
