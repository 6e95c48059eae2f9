"""Per-dataset aliases, the A/B split and shadow scoring through the local stack: the
predict function's direct path reads each dataset's serving object
(aliases/{dataset}/serving.json, written here as the registry writes it) and answers;
capture's sender (to the local Firehose) scores the shadows and lands every row under
capture/{dataset}/{model}/."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from gallop.layout import model_prefix, serving_key
from gallop.local.stack import LocalStack
from gallop.monitoring.capture import read_captured, sampled
from gallop.serving.traffic import SHADOW_SALT
from gallop.storage import Store
from tests.integration.test_capture import (
    GOING,
    capture_to,
    gateway_event,
    linear_ranker_files,
    new_stream,
    predict_app,
)

RUNNERS = 4
MAX_ROWS = 1000


@pytest.fixture(scope="module")
def served(stack: LocalStack) -> dict[str, str]:
    """Two datasets: `a` with a champion and a challenger (models that score alike rows
    differently), `b` with a champion of its own; three tiny models published as training
    publishes one."""
    assert stack.settings is not None
    artifacts = Store.artifacts_from_settings(stack.settings)
    tag = uuid.uuid4().hex[:6]
    names = {"a": f"tr-a-{tag}", "b": f"tr-b-{tag}"}
    models = {}
    for role, dataset, coef in (
        ("a1", names["a"], [1.0, -0.5, 0.25]),
        ("a2", names["a"], [-1.0, 0.8, 0.0]),
        ("b1", names["b"], [0.3, 0.3, 0.3]),
    ):
        run_id = uuid.uuid4().hex[:16]
        for name, data in linear_ranker_files(coef, dataset).items():
            artifacts.put_bytes(model_prefix(run_id) + name, data, "application/octet-stream")
        models[role] = f"m-{run_id}"
    publish(stack, names["b"], models["b1"], None)
    return names | models


def publish(
    stack: LocalStack,
    dataset: str,
    champion: str | None,
    challenger: str | None,
    mode: str = "champion",
    challenger_share: float = 0.0,
    shadow_share: float = 0.0,
) -> None:
    """The serving object, as gallop.serving.registry writes it."""
    assert stack.settings is not None
    Store.artifacts_from_settings(stack.settings).put_json(
        serving_key(dataset),
        {
            "dataset": dataset,
            "champion": champion,
            "challenger": challenger,
            "traffic": {
                "mode": mode,
                "challenger_share": challenger_share,
                "shadow_share": shadow_share,
            },
            "updated_at": datetime.now(UTC).isoformat(),
        },
    )


def races(count: int, prefix: str, seed: int = 0) -> tuple[list[str], list[list[Any]]]:
    """`count` races of RUNNERS runners as columns and data."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count * RUNNERS, 2)).round(4).tolist()
    data = [
        [f"{prefix}-{i // RUNNERS}", f"h{i % RUNNERS}", a, b, GOING[i % 3]]
        for i, (a, b) in enumerate(x)
    ]
    return ["race", "runner", "x0", "x1", "going"], data


def ask(
    app: Any, body: dict[str, Any], key: str, request_id: str = "req"
) -> tuple[int, dict[str, Any]]:
    from gallop.api.serving import answer_event

    reply = answer_event(app.state, gateway_event(body, key, request_id))
    assert reply is not None
    return reply["statusCode"], json.loads(reply["body"])


def answered(app: Any, body: dict[str, Any], key: str, request_id: str = "req") -> dict[str, Any]:
    status, reply = ask(app, body, key, request_id)
    assert status == 200, reply
    return reply


def alone(app: Any, model_id: str, columns: list[str], data: list[list[Any]], key: str) -> Any:
    """What one model answers for the rows, by its id (never split)."""
    return answered(app, {"model": model_id, "columns": columns, "data": data}, key)


def captured_rows(stack: LocalStack, dataset: str, model_id: str, request_id: str) -> list[Any]:
    assert stack.settings is not None
    store = Store.from_settings(stack.settings)
    keys = read_captured(store, dataset, model_id).keys
    rows = [json.loads(line) for k in keys for line in store.get_bytes(k).splitlines()]
    return sorted((r for r in rows if r["request_id"] == request_id), key=lambda r: r["row"])


def test_a_split_answers_its_share_of_10000_races_each_race_by_one_model(
    stack: LocalStack, served: dict[str, str]
) -> None:
    # GIVEN dataset a split 95/5 between its champion and challenger (capture off)
    publish(stack, served["a"], served["a1"], served["a2"], "split", 0.05)
    app = predict_app(stack, None)
    key = stack.api_key
    columns, data = races(10_000, "ab")
    model_of: dict[str, set[str]] = {}
    # WHEN the 10,000 races are asked for the champion, 250 races a request
    for start in range(0, len(data), MAX_ROWS):
        rows = data[start : start + MAX_ROWS]
        body = {"dataset": served["a"], "model": "champion", "columns": columns, "data": rows}
        reply = answered(app, body, key, f"split-{start}")
        # THEN each prediction names its model, the reply the first row's
        assert reply["model_id"] == reply["predictions"][0]["model_id"]
        for row, prediction in zip(rows, reply["predictions"], strict=True):
            model_of.setdefault(row[0], set()).add(prediction["model_id"])
        if start == 0:  # each row as its model alone answers it, in row order
            both = {m: alone(app, served[m], columns, rows, key) for m in ("a1", "a2")}
            for i, prediction in enumerate(reply["predictions"]):
                role = "a1" if prediction["model_id"] == served["a1"] else "a2"
                expected = both[role]["predictions"][i] | {"model_id": served[role]}
                assert prediction == expected
    # AND every runner of a race got one model, and the challenger about 5 % of races
    assert all(len(models) == 1 for models in model_of.values())
    to_challenger = sum(models == {served["a2"]} for models in model_of.values())
    assert abs(to_challenger / len(model_of) - 0.05) <= 0.02
    assert len(model_of) == 10_000


def test_a_request_for_the_challenger_or_a_model_id_is_never_split(
    stack: LocalStack, served: dict[str, str]
) -> None:
    publish(stack, served["a"], served["a1"], served["a2"], "split", 0.5)
    app = predict_app(stack, None)
    columns, data = races(50, "whole")
    for asked, expected in (("challenger", "a2"), (served["a1"], "a1")):
        body = {"dataset": served["a"], "model": asked, "columns": columns, "data": data}
        reply = answered(app, body, stack.api_key)
        assert reply == alone(app, served[expected], columns, data, stack.api_key)
        assert "model_id" not in reply["predictions"][0]


def test_the_challenger_in_shadow_scores_its_share_off_the_reply_path(
    stack: LocalStack, served: dict[str, str]
) -> None:
    # GIVEN dataset a's challenger in shadow on half of the races, capture on
    publish(stack, served["a"], served["a1"], served["a2"], "shadow", 0.0, 0.5)
    capture, out = capture_to(stack, new_stream(stack))
    app = predict_app(stack, capture)
    columns, data = races(200, f"sh-{uuid.uuid4().hex[:6]}", seed=1)
    body = {"dataset": served["a"], "model": "champion", "columns": columns, "data": data}
    # WHEN the 200 races are asked for the champion
    reply = answered(app, body, stack.api_key, "shadow-1")
    # THEN the champion answered, as it alone would
    assert reply == alone(predict_app(stack, None), served["a1"], columns, data, stack.api_key)
    assert capture.flush(timeout=60)
    # AND the champion's rows are captured as served, all 800
    served_rows = captured_rows(stack, served["a"], served["a1"], "shadow-1")
    assert [r["row"] for r in served_rows] == list(range(len(data)))
    assert {(r["shadow"], r["alias"]) for r in served_rows} == {(False, "champion")}
    # AND the challenger's shadow rows are the races the shadow hash picks, whole, with
    # what the challenger answers for them and their places in the request
    shadow_rows = captured_rows(stack, served["a"], served["a2"], "shadow-1")
    race_ids = sorted({row[0] for row in data})
    picked = {r for r in race_ids if sampled(r, 0.5, SHADOW_SALT)}
    assert {r["group"] for r in shadow_rows} == picked and 0.35 < len(picked) / 200 < 0.65
    assert len(shadow_rows) == RUNNERS * len(picked)
    assert {(r["shadow"], r["alias"], r["model_id"]) for r in shadow_rows} == {
        (True, "challenger", served["a2"])
    }
    own = alone(app, served["a2"], columns, data, stack.api_key)["predictions"]
    for record in shadow_rows:
        assert data[record["row"]][0] == record["group"]
        assert record["outputs"] == own[record["row"]]
    assert capture.totals.failures == 0 and capture.totals.shadow_failures == 0
    assert "ShadowDropped" not in out.getvalue()


def test_capture_of_a_split_names_the_model_that_answered_and_the_other_in_shadow(
    stack: LocalStack, served: dict[str, str]
) -> None:
    publish(stack, served["a"], served["a1"], served["a2"], "split", 0.5, 1.0)
    capture, _ = capture_to(stack, new_stream(stack))
    app = predict_app(stack, capture)
    columns, data = races(60, f"cs-{uuid.uuid4().hex[:6]}", seed=2)
    body = {"dataset": served["a"], "model": "champion", "columns": columns, "data": data}
    reply = answered(app, body, stack.api_key, "split-cap")
    assert capture.flush(timeout=60)
    by_model = {p["model_id"] for p in reply["predictions"]}
    assert by_model == {served["a1"], served["a2"]}  # 60 races at 50 %: both answered
    for role, alias in (("a1", "champion"), ("a2", "challenger")):
        records = captured_rows(stack, served["a"], served[role], "split-cap")
        # every row once: served where this model answered, in shadow where the other did
        assert sorted(r["row"] for r in records) == list(range(len(data)))
        for record in records:
            answered_by = reply["predictions"][record["row"]]["model_id"]
            assert record["shadow"] == (answered_by != served[role])
            assert record["alias"] == alias
            assert "model_id" not in record["outputs"]


def test_a_challenger_that_cannot_score_never_fails_the_reply(
    stack: LocalStack, served: dict[str, str]
) -> None:
    # GIVEN a challenger in shadow whose files are gone
    ghost = f"m-{uuid.uuid4().hex[:16]}"
    publish(stack, served["a"], served["a1"], ghost, "shadow", 0.0, 1.0)
    capture, out = capture_to(stack, new_stream(stack))
    app = predict_app(stack, capture)
    columns, data = races(5, f"gh-{uuid.uuid4().hex[:6]}")
    body = {"dataset": served["a"], "model": "champion", "columns": columns, "data": data}
    # WHEN asked for the champion, THEN the champion answers; the shadow's loss is counted
    reply = answered(app, body, stack.api_key, "ghost")
    assert reply["model_id"] == served["a1"]
    assert capture.flush(timeout=60)
    assert capture.totals.shadow_failures == len(data)
    assert capture.totals.captured == len(data)  # the champion's rows
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line.get("ShadowFailures", 0) for line in lines if line["model"] == ghost) == 20


def test_two_datasets_champions_answer_their_own_requests(
    stack: LocalStack, served: dict[str, str]
) -> None:
    publish(stack, served["a"], served["a1"], served["a2"])
    app = predict_app(stack, None)
    key = stack.api_key
    columns, data = races(3, "two")

    def body(**asked: Any) -> dict[str, Any]:
        return asked | {"columns": columns, "data": data}

    for dataset, role in (("a", "a1"), ("b", "b1")):
        reply = answered(app, body(dataset=served[dataset], model="champion"), key)
        assert reply == alone(app, served[role], columns, data, key)
    # an alias without a dataset: the one dataset's that has it, else a 422 naming them
    status, problem = ask(app, body(model="champion"), key)
    assert status == 422
    assert problem["detail"] == (f"name the dataset: {served['a']}, {served['b']} have a champion")
    assert answered(app, body(model="challenger"), key)["model_id"] == served["a2"]
    assert ask(app, body(), key)[0] == 422  # "champion" is the default


@pytest.mark.parametrize(
    ("asked", "status", "says"),
    [
        ({"dataset": "b", "model": "challenger"}, 404, "has no challenger yet"),
        ({"dataset": "nowhere", "model": "champion"}, 404, "'nowhere' has no champion"),
        ({"dataset": "b", "model": "a1"}, 422, "is of dataset"),
        ({"dataset": "Not A Name", "model": "champion"}, 422, "'dataset' must be"),
        ({"dataset": 7, "model": "champion"}, 422, "'dataset' must be"),
    ],
)
def test_a_request_that_names_no_model_of_its_dataset_is_refused(
    stack: LocalStack, served: dict[str, str], asked: dict[str, Any], status: int, says: str
) -> None:
    asked = {k: served.get(v, v) if isinstance(v, str) else v for k, v in asked.items()}
    columns, data = races(1, "bad")
    got, problem = ask(
        predict_app(stack, None), asked | {"columns": columns, "data": data}, stack.api_key
    )
    assert got == status and says in problem["detail"], problem
