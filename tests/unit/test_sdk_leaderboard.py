"""gallop.Client.leaderboard: one row per model of the stack, each base with its weight,
whatever its kind is called. The API is httpx's MockTransport answering as the model
routes do, from a manifest shaped as the stack job writes it."""

from __future__ import annotations

import httpx

from gallop.sdk import Client

RUN = {"run_id": "r1", "status": "SUCCEEDED", "model": {"model_id": "m-1"}}
MODEL = {
    "model_id": "m-1",
    # held-out metrics keyed as the stack job keys them; base kinds may hold underscores
    "leaderboard": {
        "base_0_lambdarank": {"ndcg@1": 0.40},
        "base_1_position_regression": {"ndcg@1": 0.41},
        "base_2_binary_win": {"ndcg@1": 0.39},
        "stack": {"ndcg@1": 0.42},
    },
    "base_models": [
        {"model": "lambdarank", "weight": 0.5},
        {"model": "position_regression", "weight": 0.3},
        {"model": "binary_win", "weight": 0.2},
    ],
}


def answer(request: httpx.Request) -> httpx.Response:
    routes = {"/v1/training-runs/r1": RUN, "/v1/models/m-1": MODEL}
    return httpx.Response(200, json=routes[request.url.path])


def test_each_base_of_any_kind_shows_its_weight() -> None:
    with Client("http://gallop.test", "key", transport=httpx.MockTransport(answer)) as client:
        board = client.leaderboard("r1")
    assert list(board.index) == ["stack", "lambdarank", "position_regression", "binary_win"]
    assert board["weight"].iloc[1:].tolist() == [0.5, 0.3, 0.2]
    assert board.loc["stack", "ndcg@1"] == 0.42
