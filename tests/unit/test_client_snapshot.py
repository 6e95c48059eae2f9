"""Which entity snapshot completes a race card, as the clients ask for it and say it: the
request's `snapshot` (sent only when chosen) and the reply's `features_as_of` in the SDK's
DataFrames. The API is httpx's MockTransport: what the clients send and keep is checked
here; the API's own answer is pinned with the serving tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

import gallop
from gallop.cli import main
from gallop.client import GallopClient

AS_OF = {
    "version_id": "v-20260106-9b8a7c6d",
    "data_end": "2026-01-06T20:45:00Z",
    "snapshot": "online",
}
CARD = [{"race_id": "r9", "horse_id": "h1"}, {"race_id": "r9", "horse_id": "h2"}]


def serving(sent: list[dict[str, Any]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        reply: dict[str, Any] = {"model_id": "m-1", "features_as_of": AS_OF}
        if request.url.path == "/v1/predict":
            reply["predictions"] = [{"score": 0.5} for _ in body["data"]]
        else:
            one = {"score": 0.5, "base_value": 0.1, "contributions": {"draw": 0.4}, "top": []}
            reply["explanations"] = [one for _ in body["data"]]
        return httpx.Response(200, json=reply)

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("snapshot", [None, "training", "online"])
def test_the_client_sends_the_snapshot_only_when_chosen(snapshot: str | None) -> None:
    sent: list[dict[str, Any]] = []
    client = GallopClient("http://gallop.test", "key", transport=serving(sent))
    client.predict("champion", columns=["race_id"], data=[["r9"]], snapshot=snapshot)
    client.explain("champion", columns=["race_id"], data=[["r9"]], top_k=2, snapshot=snapshot)
    chosen = {} if snapshot is None else {"snapshot": snapshot}
    columnar = {"model": "champion", "columns": ["race_id"], "data": [["r9"]]}
    assert sent == [columnar | chosen, columnar | chosen | {"top_k": 2}]


def test_the_sdk_says_which_snapshot_completed_a_card() -> None:
    # GIVEN an API that completes race cards and says from which snapshot
    sent: list[dict[str, Any]] = []
    with gallop.Client("http://gallop.test", "key", transport=serving(sent)) as client:
        card = pd.DataFrame(CARD)
        # WHEN a card is scored and explained, once pinned to the training snapshot
        predicted = client.predict(card)
        explained = client.explain(card, snapshot="training")
    # THEN both DataFrames carry features_as_of, and only the pinned request named one
    assert predicted.attrs["features_as_of"] == AS_OF == explained.attrs["features_as_of"]
    assert ["snapshot" in body for body in sent] == [False, True]
    assert sent[1]["snapshot"] == "training"


def test_predict_with_a_model_folder_refuses_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "card.json"
    rows.write_text(json.dumps({"rows": CARD}))
    code = main(
        ["predict", "--model", str(tmp_path), "--input", str(rows), "--snapshot", "training"]
    )
    said = capsys.readouterr()
    assert code == 1 and not said.out and "registered model" in said.err
