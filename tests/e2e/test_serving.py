"""Serving: predictions, explanations and aliases, through the local stack's API, the
predict Lambda handler in a fresh process, and the arithmetic behind them."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from gallop.client import GallopClient
from gallop.local.stack import LocalStack
from gallop.serving.predict import place_probabilities, ranks, win_probabilities
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from tests.conftest import spec_named, unique_name
from tests.e2e.test_features_e2e import ingest

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"num_boost_round": 20, "folds": 3}
BASES = ["lambdarank", "binary_win", "linear"]  # a stack of three kinds: serving is the point
# Never on the predict path: a test imports the handler and predicts in a fresh process.
HEAVY = ("pandas", "pyarrow", "lightgbm", "scipy", "sklearn", "sqlalchemy")


# -- the arithmetic --------------------------------------------------------------------


def test_place_probabilities_equal_harvilles_sum_over_orders() -> None:
    win = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    exact = np.zeros(5)
    for order in itertools.permutations(range(5), 3):
        chance, left = 1.0, 1.0
        for runner in order:
            chance *= win[runner] / left
            left -= win[runner]
        for runner in order:
            exact[runner] += chance
    race = np.zeros(5, dtype=int)
    assert np.allclose(place_probabilities(win, race, 1), exact, atol=1e-12)
    assert place_probabilities(win, race, 1).sum() == pytest.approx(3.0)
    # a field of three: everyone places
    assert (place_probabilities(np.array([0.5, 0.3, 0.2]), np.zeros(3, int), 1) == 1).all()


def test_place_probabilities_hold_when_one_or_two_runners_hold_nearly_all_the_chance() -> None:
    race = np.zeros(4, dtype=int)
    # 1 - p is 0 in float64 for the favourite; the others still place in their order
    place = place_probabilities(np.array([1.0, 1e-20, 1e-25, 1e-30]), race, 1)
    assert np.isfinite(place).all() and place.sum() == pytest.approx(3.0)
    assert place[:2] == pytest.approx([1, 1]) and place[3] == pytest.approx(1e-5, rel=1e-3)
    # two runners take the first two places: the third goes to one of three equal others
    race = np.zeros(5, dtype=int)
    place = place_probabilities(np.array([0.5, 0.5, 1e-20, 1e-20, 1e-20]), race, 1)
    assert place == pytest.approx([1, 1, 1 / 3, 1 / 3, 1 / 3])


def linear_ranker(coef: list[float]) -> Any:
    """A served ranking model of one linear base over features x0, x1, ... (race: group)."""
    from gallop.models.linear import LinearModel
    from gallop.models.onnx_export import stack_to_onnx
    from gallop.serving.model import LoadedModel, session_for

    n = len(coef)
    wide = np.full(n, 3e38)
    line = LinearModel(np.zeros(n), np.ones(n), np.array(coef), 0.0, -wide, wide)
    graph = stack_to_onnx([line], [1.0], 0.0, n).SerializeToString()
    manifest = {
        "task": "ranking",
        "features": [f"x{i}" for i in range(n)],
        "group": "race",
        "identifiers": ["race"],
        "onnx_input": "features",
        "onnx_outputs": ["score", "margins"],
    }
    return LoadedModel("m-1", manifest, session_for(graph), lambda name: b"")


def test_a_score_beyond_float32_is_refused_not_answered_with_nulls() -> None:
    from gallop.serving.predict import InputError, predict_columns

    model = linear_ranker([1e30])
    answer = predict_columns(model, ["x0", "race"], [[1e-3, "r1"], [2e-3, "r1"]])
    assert sum(p["win_probability"] for p in answer["predictions"]) == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"rows \[1\]: the score is not finite"):
        predict_columns(model, ["x0", "race"], [[1e10, "r1"], [1.0, "r1"]])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"rows": [{"x0": 1, "race": "r"}, {"race": "r"}]},
            "rows [2] lack names other rows have (row 2: ['x0'])",
        ),
        ({"columns": ["x0", "race"], "data": [[1, "r"], [2]]}, "data rows [2] do not have"),
        ({"columns": ["x0", "race"], "data": [[1, "r"], ["fast", "r"]]}, "row 2: x0 must be"),
        ({"columns": ["x0", "race"], "data": [[1, "r"], [1e39, "r"]]}, "row 2: x0 is not a"),
        ({"columns": ["x0", "race"], "data": [[1, "r"], [1, ""]]}, "row 2: the group id"),
        ({"columns": ["x0", "race"], "data": [[1, "r"], [1e10, "r"]]}, "rows [2]: the score"),
    ],
    ids=["missing-name", "ragged", "text", "beyond-float32", "no-group", "score"],
)
def test_predict_errors_number_rows_from_one_as_ingestion_reports_do(
    body: dict[str, Any], says: str
) -> None:
    from gallop.serving.predict import InputError, predict_body

    with pytest.raises(InputError) as refused:
        predict_body(linear_ranker([1e30]), body)
    assert says in str(refused.value)


def test_win_probabilities_and_ranks_within_interleaved_races() -> None:
    score = np.array([2.0, 0.0, 1.0, 5.0, -1.0, 900.0])
    race = np.array([0, 1, 0, 2, 1, 0])
    win = win_probabilities(score, race, 3)
    assert np.allclose(np.bincount(race, weights=win), 1.0) and np.isfinite(win).all()
    assert win[3] == 1.0  # a race with one runner
    assert ranks(score, race).tolist() == [2, 1, 3, 1, 2, 1]


# -- through the local stack -----------------------------------------------------------


@pytest.fixture(scope="module")
def served(stack: LocalStack, races_spec: DatasetSpec) -> dict[str, Any]:
    """Two models of one dataset (different settings, so two runs), and held-out races."""
    assert stack.api_url is not None
    client = GallopClient(stack.api_url, stack.api_key)
    runners, truth = generate_races(160, seed=8)
    last = runners["race_id"].iloc[-1]
    spec = spec_named(races_spec, unique_name("serve"))
    history = runners[runners["race_id"] != last]
    version_id = ingest(client, spec, history.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, version_id, timeout=120)["status"] == "READY"
    models = []
    for rounds in (20, 30):
        run = client.start_training_run(
            spec.name, bases=BASES, hyperparameters={**SMALL, "num_boost_round": rounds}
        )
        done = client.wait_for_training_run(run["run_id"], timeout=600)
        assert done["status"] == "SUCCEEDED", done["reason"]
        models.append(done["model"]["model_id"])
    client.close()
    card = runners[runners["race_id"] == last]
    return {"models": models, "card": card, "dataset": spec.name, "truth": truth}


def call(
    stack: LocalStack, path: str, body: Any = None, raw: bytes | None = None
) -> httpx.Response:
    assert stack.api_url is not None
    headers = {"x-api-key": stack.api_key, "content-type": "application/json"}
    if raw is None and body is None:
        return httpx.get(stack.api_url + path, headers=headers, timeout=60)
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(stack.api_url + path, content=content, headers=headers, timeout=60)


def card_rows(card: pd.DataFrame) -> list[dict[str, Any]]:
    """What an application sends before the off: ids and pre-race fields, no result."""
    pre_race = card.drop(columns=["position", "finish_time_s"], errors="ignore")
    return json.loads(pre_race.to_json(orient="records"))


def answer_time(card: pd.DataFrame) -> str:
    """The card's start time as features_as_of writes times (ISO 8601, UTC)."""
    return pd.Timestamp(card["race_time"].iloc[0], tz="UTC").isoformat()


def feature_rows(stack: LocalStack, served: dict[str, Any]) -> list[dict[str, Any]]:
    """Full feature rows of the held-back race, as the card endpoint computes them; a
    category as its text (as feature rows send it), not the snapshot's code."""
    model = call(stack, f"/v1/models/{served['models'][0]}").json()
    versions = call(stack, f"/v1/datasets/{served['dataset']}/versions").json()["items"]
    version_id = versions[-1]["version_id"]
    card = card_rows(served["card"])
    features = call(
        stack,
        f"/v1/datasets/{served['dataset']}/versions/{version_id}/features/card",
        {"rows": card},
    ).json()
    at = [features["features"].index(f) for f in model["features"]]
    race = served["card"]["race_id"].iloc[0]
    return [
        {
            **{
                name: sent[name] if isinstance(sent.get(name), str) else row[j]
                for name, j in zip(model["features"], at, strict=True)
            },
            "race_id": race,
        }
        for row, sent in zip(features["rows"], card, strict=True)
    ]


def test_models_are_listed_and_an_alias_must_be_promoted_first(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    listed = call(stack, "/v1/models").json()["items"]
    assert set(served["models"]) <= {m["model_id"] for m in listed}
    one = call(stack, f"/v1/models/{served['models'][0]}").json()
    assert one["task"] == "ranking" and one["report_url"].startswith("http")
    assert call(stack, "/v1/models/m-nothing").status_code == 404
    body = {"model": "challenger", "rows": [{"x": 1}]}
    assert call(stack, "/v1/predict", body).status_code == 404
    assert call(stack, "/v1/predict", {**body, "model": "m-nothing"}).status_code == 404
    for text in ("abc", "m-" + "0" * 16, "m-../../x", "m-" + "f" * 2000):
        assert call(stack, "/v1/predict", {**body, "model": text}).status_code == 404
    bad_alias = call(stack, f"/v1/models/{served['models'][0]}/promote", {"alias": "king"})
    assert bad_alias.status_code == 422
    assert call(stack, "/v1/models/m-nothing/promote", {"alias": "champion"}).status_code == 404
    for path in ("/v1/predict", "/v1/explain"):  # no key, no answer
        assert httpx.post(f"{stack.api_url}{path}", json=body).status_code == 401


def test_a_race_card_is_predicted_by_the_champion(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    first = served["models"][0]
    promoted = call(stack, f"/v1/models/{first}/promote", {"alias": "champion"})
    assert promoted.status_code == 200 and promoted.json()["model_id"] == first
    # WHEN the card (ids and pre-race fields only) is sent for the champion
    reply = call(stack, "/v1/predict", {"model": "champion", "rows": card_rows(served["card"])})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    # THEN every runner has a score, win and place chance and a rank
    assert answer["model_id"] == first
    # from the newest entity snapshot of the dataset (the only version: the model's own)
    as_of = answer["features_as_of"]
    assert as_of["snapshot"] == "online" and as_of["data_end"] < answer_time(served["card"])
    predictions = answer["predictions"]
    assert len(predictions) == len(served["card"])
    assert sum(p["win_probability"] for p in predictions) == pytest.approx(1.0)
    assert sum(p["place_probability"] for p in predictions) == pytest.approx(
        min(3, len(predictions))
    )
    assert sorted(p["rank"] for p in predictions) == list(range(1, len(predictions) + 1))
    best = max(predictions, key=lambda p: p["score"])
    assert best["rank"] == 1 and best["win_probability"] == max(
        p["win_probability"] for p in predictions
    )


def test_feature_rows_and_columns_give_the_same_answer_as_the_card(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    model = served["models"][0]
    rows = feature_rows(stack, served)
    by_rows = call(stack, "/v1/predict", {"model": model, "rows": rows}).json()["predictions"]
    by_card = call(stack, "/v1/predict", {"model": model, "rows": card_rows(served["card"])})
    columns = list(rows[0])
    by_columns = call(
        stack,
        "/v1/predict",
        {"model": model, "columns": columns, "data": [[r[c] for c in columns] for r in rows]},
    ).json()["predictions"]
    assert by_rows == by_columns
    card = card_rows(served["card"])
    names = list(card[0])
    card_columns = {"model": model, "columns": names, "data": [[r[n] for n in names] for r in card]}
    by_card_columns = call(stack, "/v1/predict", card_columns)
    assert by_card_columns.json()["predictions"] == by_card.json()["predictions"]
    late = [{**r, "race_time": "9999-12-31T23:59:00-12:00"} for r in card]
    too_late = call(stack, "/v1/predict", {"model": model, "rows": late})
    assert too_late.status_code == 422 and "out of range" in too_late.json()["detail"]
    assert [p["score"] for p in by_rows] == pytest.approx(
        [p["score"] for p in by_card.json()["predictions"]]
    )


def test_explanations_add_up_to_the_score(stack: LocalStack, served: dict[str, Any]) -> None:
    model = served["models"][0]
    rows = feature_rows(stack, served)
    reply = call(stack, "/v1/explain", {"model": model, "rows": rows, "top_k": 3})
    assert reply.status_code == 200, reply.text
    scores = call(stack, "/v1/predict", {"model": model, "rows": rows}).json()["predictions"]
    for explained, predicted in zip(reply.json()["explanations"], scores, strict=True):
        total = explained["base_value"] + sum(explained["contributions"].values())
        assert total == pytest.approx(predicted["score"], abs=1e-5)
        assert explained["score"] == pytest.approx(total, abs=1e-9)  # the native stack's
        assert len(explained["top"]) == 3
        top = explained["top"][0]
        assert abs(top["contribution"]) == max(abs(v) for v in explained["contributions"].values())
        verb = "raised" if top["contribution"] >= 0 else "lowered"
        assert top["reason"].startswith(top["feature"]) and verb in top["reason"]


BAD_INPUTS = [
    (lambda rows: {"rows": []}, 422, "no rows"),
    (lambda rows: {"rows": [rows[0]] * 1001}, 413, "more than 1000"),
    (lambda rows: {"rows": [{**rows[0], "colour": 3}]}, 422, "unknown: ['colour']"),
    (
        lambda rows: {"rows": [{k: v for k, v in rows[0].items() if k != "odds"}]},
        422,
        "missing: ['odds']",
    ),
    (lambda rows: {"rows": [{**rows[0], "odds": "evens"}]}, 422, "odds must be a number"),
    (lambda rows: {"rows": [{**rows[0], "odds": 1e39}]}, 422, "not a finite float32"),
    (lambda rows: {"rows": [{**rows[0], "odds": True}]}, 422, "not True"),
    (
        lambda rows: {"rows": [{k: v for k, v in rows[0].items() if k != "race_id"}]},
        422,
        "group column",
    ),
    (lambda rows: {"columns": list(rows[0]), "data": [[1.0]]}, 422, "do not have"),
    (lambda rows: [1, 2], 422, "JSON object"),
    (
        lambda rows: {"rows": [rows[0], {k: v for k, v in rows[1].items() if k != "odds"}]},
        422,
        "rows [2] lack names other rows have (row 2: ['odds'])",
    ),
    (lambda rows: {"rows": rows, "top_k": 0}, 422, "top_k"),
    (
        lambda rows: {"columns": [*rows[0], "odds"], "data": [[*rows[0].values(), 9.0]]},
        422,
        "columns named more than once: ['odds']",
    ),
    (  # the error names a few, however many there are
        lambda rows: {"rows": [{**rows[0], **{f"{i:03}" + "x" * 500: 1 for i in range(900)}}]},
        422,
        "['000xxxxxxxxx",
    ),
    (  # 1,000 rows explained, every feature's part: past what Lambda may return
        lambda rows: {"rows": (rows * 1000)[:1000], "top_k": 40},
        413,
        "send fewer rows per request",
    ),
]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    BAD_INPUTS,
    ids=[
        "empty",
        "too-many",
        "unknown",
        "missing",
        "text",
        "infinite",
        "bool",
        "no-group",
        "ragged",
        "not-object",
        "short-row",
        "top_k",
        "repeated-column",
        "many-unknown",
        "reply-too-large",
    ],
)
def test_bad_input_is_refused_with_the_reason(
    stack: LocalStack, served: dict[str, Any], change: Any, status: int, message: str
) -> None:
    rows = feature_rows(stack, served)
    body = change(rows)
    if isinstance(body, dict):
        body["model"] = served["models"][0]
    path = "/v1/explain" if isinstance(body, dict) and "top_k" in body else "/v1/predict"
    reply = call(stack, path, body)
    assert reply.status_code == status, reply.text[:2000]
    assert message in reply.json()["detail"] and len(reply.text) < 2000


def broken_card(served: dict[str, Any]) -> list[dict[str, Any]]:
    """The held-back race's card with odds of 0 (row 1) and -5 (row 3), and row 4's horse
    the one in row 2: what ingestion refuses."""
    card = card_rows(served["card"])
    card[0]["odds"], card[2]["odds"] = 0, -5
    card[3]["horse_id"] = card[1]["horse_id"]
    return card


def assert_broken_card_refused(status: int, reply: dict[str, Any]) -> None:
    """422, every problem listed as ingestion lists it: code, column, rows from 1, values."""
    assert status == 422, reply
    found = {p["code"]: p for p in reply["problems"]}
    assert set(found) == {"invalid_odds", "duplicate_entity_in_group"}
    odds, twice = found["invalid_odds"], found["duplicate_entity_in_group"]
    assert (odds["column"], odds["rows"], odds["examples"]) == ("odds", [1, 3], ["0.0", "-5.0"])
    assert (twice["column"], twice["rows"]) == ("horse_id", [2, 4])
    assert reply["detail"].startswith("race card: ")
    assert all(p["message"] in reply["detail"] for p in reply["problems"])


def test_a_card_ingestion_would_refuse_is_refused_naming_rows_and_rules(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    # GIVEN a card with odds of 0 and -5 and a horse twice
    body = {"model": served["models"][0], "rows": broken_card(served)}
    # WHEN it is sent to the app, and to the predict function's direct path (the Lambda's)
    from gallop.api.serving import answer_event, create_predict_app

    assert stack.settings is not None
    settings = stack.settings.model_copy(update={"api_key_source": "settings"})
    direct = create_predict_app(settings).state
    for path in ("/v1/predict", "/v1/explain"):
        reply = call(stack, path, body)
        event = answer_event(direct, gateway_event(path, body, stack.api_key))
        assert event is not None
        # THEN both answer 422 with every problem, rows numbered from 1
        assert_broken_card_refused(reply.status_code, reply.json())
        assert_broken_card_refused(event["statusCode"], json.loads(event["body"]))


def test_nan_and_infinite_odds_on_a_card_are_refused(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    # GIVEN a card with odds NaN in row 2 and infinite in row 3 (json.dumps writes NaN and
    # Infinity, which are not JSON)
    card = card_rows(served["card"])
    card[1]["odds"], card[2]["odds"] = float("nan"), float("inf")
    versions = call(stack, f"/v1/datasets/{served['dataset']}/versions").json()["items"]
    path = f"/v1/datasets/{served['dataset']}/versions/{versions[-1]['version_id']}/features/card"
    # WHEN the card features route (its parser reads NaN and Infinity) is asked for them
    reply = call(stack, path, {"rows": card})
    # THEN a 422 names each row and rule
    assert reply.status_code == 422, reply.text
    found = {(p["code"], p["column"], tuple(p["rows"])) for p in reply.json()["problems"]}
    assert found == {
        ("not_numeric", "odds", (2,)),  # NaN: null says a value is unknown
        ("invalid_odds", "odds", (3,)),
        ("infinite_value", "odds", (3,)),
    }
    # AND predict refuses the body before reading a row: NaN and Infinity are no JSON
    predicted = call(stack, "/v1/predict", {"model": served["models"][0], "rows": card})
    assert predicted.status_code == 422 and "not JSON" in predicted.json()["detail"]


def test_missing_values_and_a_lone_runner_are_answered(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    row = {**feature_rows(stack, served)[0], "odds": None, "horse_days_since_last": None}
    reply = call(stack, "/v1/predict", {"model": served["models"][0], "rows": [row]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["win_probability"] == 1.0
    too_big = call(stack, "/v1/predict", raw=b'{"rows": [' + b" " * (6 * 1024 * 1024) + b"]}")
    assert too_big.status_code == 413
    assert call(stack, "/v1/predict", raw=b'{"rows": [{"odds": NaN}]}').status_code == 422


def test_promotion_switches_every_request_at_once(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    first, second = served["models"]
    rows = feature_rows(stack, served)
    assert call(stack, f"/v1/models/{first}/promote", {"alias": "champion"}).status_code == 200
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=stack.api_url or "", timeout=60) as http:
            while not stop.is_set():
                reply = http.post(
                    "/v1/predict",
                    json={"model": "champion", "rows": rows},
                    headers={"x-api-key": stack.api_key},
                )
                seen.append((reply.status_code, reply.json().get("model_id")))

    workers = [threading.Thread(target=keep_predicting) for _ in range(2)]
    for worker in workers:
        worker.start()
    for model in (second, first, second):
        promoted = call(stack, f"/v1/models/{model}/promote", {"alias": "champion"})
        assert promoted.status_code == 200
    stop.set()
    for worker in workers:
        worker.join()
    assert seen and all(status == 200 for status, _ in seen)
    assert {model for _, model in seen} <= {first, second}
    after = call(stack, "/v1/predict", {"model": "champion", "rows": rows}).json()
    assert after["model_id"] == second  # this process forgets its lookup on promotion
    listed = {m["model_id"]: m["aliases"] for m in call(stack, "/v1/models").json()["items"]}
    assert listed[second] == ["champion"] and listed[first] == []


def gateway_event(path: str, body: Any, key: str | None, raw: bytes | None = None) -> dict:
    """An API Gateway REST event for POST `path`, as the predict function receives it."""
    event = json.loads((ROOT / "tests" / "events" / "apigw_get_health.json").read_text())
    headers = {"content-type": "application/json"} | ({"X-Api-Key": key} if key else {})
    event |= {
        "resource": path,
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "body": (raw if raw is not None else json.dumps(body).encode()).decode(),
        "isBase64Encoded": False,
    }
    event["requestContext"] |= {"resourcePath": path, "httpMethod": "POST"}
    return event


def test_the_predict_lambda_imports_nothing_heavy(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    """A fresh process: import the handler, answer API Gateway events (feature rows, a
    race card, a card that breaks ingestion's rules), list the modules."""
    rows = feature_rows(stack, served)
    model = served["models"][0]
    events = [
        gateway_event("/v1/predict", {"model": model, "rows": body}, stack.api_key)
        for body in (rows, card_rows(served["card"]), broken_card(served))
    ]
    handler = str(ROOT / "functions" / "predict" / "handler.py")
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("h", {handler!r})
handler = importlib.util.module_from_spec(spec); spec.loader.exec_module(handler)
replies = [handler.handler(event, None) for event in json.loads(sys.stdin.read())]
heavy = [m for m in {HEAVY!r} if m in sys.modules]
statuses = [reply["statusCode"] for reply in replies]
print(json.dumps({{"statuses": statuses, "body": replies[0]["body"], "heavy": heavy}}))
"""
    assert stack.settings is not None
    env = {
        **os.environ,
        "GALLOP_AWS_ENDPOINT_URL": stack.settings.aws_endpoint_url or "",
        "GALLOP_DATA_BUCKET": stack.settings.data_bucket,
        "GALLOP_ARTIFACTS_BUCKET": stack.settings.artifacts_bucket,
        "GALLOP_API_KEY_SOURCE": "settings",
        "GALLOP_API_KEYS": stack.api_key,
        "GALLOP_CAPTURE_STREAM": stack.settings.capture_stream,
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["statuses"] == [200, 200, 422], result["body"]
    assert len(json.loads(result["body"])["predictions"]) == len(rows)
    assert result["heavy"] == []


def test_the_predict_function_answers_from_the_event_as_the_app_does(
    stack: LocalStack, served: dict[str, Any]
) -> None:
    """POST /v1/predict and /v1/explain are answered straight from the event, without
    the ASGI round trip: every reply, good or bad, is the app's (through Mangum)."""
    from gallop.api.gateway import asgi_handler
    from gallop.api.serving import answer_event, create_predict_app

    assert stack.settings is not None
    app = create_predict_app(stack.settings.model_copy(update={"api_key_source": "settings"}))
    through_app = asgi_handler(app)
    model = served["models"][0]
    rows = feature_rows(stack, served)
    key = stack.api_key
    events = [
        gateway_event("/v1/predict", {"model": model, "rows": rows}, key),
        gateway_event("/v1/predict", {"model": model, "rows": card_rows(served["card"])}, key),
        gateway_event("/v1/explain", {"model": model, "rows": rows, "top_k": 2}, key),
        gateway_event("/v1/predict", {"model": model, "rows": rows}, None),
        gateway_event("/v1/predict", {"model": model, "rows": rows}, "not-the-key"),
        gateway_event("/v1/predict", {"model": "m-nothing", "rows": rows}, key),
        gateway_event("/v1/predict", None, key, raw=b'{"rows": [{"odds": NaN}]}'),
        gateway_event("/v1/predict", None, key, raw=b"[" * 7_000_000),
    ] + [
        gateway_event(
            "/v1/explain" if isinstance(b, dict) and "top_k" in b else "/v1/predict",
            {**b, "model": model} if isinstance(b, dict) else b,
            key,
        )
        for b in (change(rows) for change, _, _ in BAD_INPUTS)
    ]
    encoded = dict(events[0], isBase64Encoded=True)
    encoded["body"] = base64.b64encode(events[0]["body"].encode()).decode()
    events.append(encoded)
    statuses = []
    for event in events:
        direct, framed = answer_event(app.state, event), through_app(event, None)
        assert direct is not None
        statuses.append(direct["statusCode"])
        assert direct["statusCode"] == framed["statusCode"], framed["body"][:300]
        assert json.loads(direct["body"]) == json.loads(framed["body"])
        assert direct["headers"]["content-type"] == framed["headers"]["content-type"]
    assert statuses[:9] == [200, 200, 200, 401, 401, 404, 422, 413, 422]
    assert statuses[-1] == 200
    # any other route or method is the app's
    docs = dict(events[0], httpMethod="GET", path="/openapi.json")
    assert answer_event(app.state, docs) is None
    assert answer_event(app.state, dict(events[0], httpMethod="GET")) is None


# -- no input makes it answer 5xx ------------------------------------------------------


@pytest.fixture(scope="module")
def serving_schema(stack: LocalStack, served: dict[str, Any]) -> Any:
    """The serving and model routes of the app, in process, on the stack's data, with a
    champion to answer."""
    import schemathesis

    from gallop.api.app import create_app

    champion = call(stack, f"/v1/models/{served['models'][0]}/promote", {"alias": "champion"})
    assert champion.is_success
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(stack.settings))
    return schema.include(path_regex=r"^/v1/(predict|explain|models)")


def test_no_input_makes_the_serving_api_answer_5xx(stack: LocalStack, serving_schema: Any) -> None:
    """Schemathesis generates bodies, paths and headers from the OpenAPI schema (valid
    and not) for every serving and model route; none may bring a server error."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    operations = [result.ok() for result in serving_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/explain", "/v1/models"}
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers={"x-api-key": stack.api_key})
            assert response.status_code < 500, (case.path, case.body, response.text[:500])

        check()
