"""Fresh cards through the local stack: a model trained on one version of a dataset answers
a race card from the newest version's entity snapshot once its features are READY (within
the alias TTL), says so in `features_as_of`, and answers from its own when pinned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest

from gallop.client import GallopClient
from gallop.layout import APPEND, MANIFEST_FILE, features_prefix
from gallop.local.stack import LocalStack, free_port
from gallop.serving.model import LoadedModel
from gallop.serving.registry import model_prefix
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.artifacts import publish_model_dir
from tests.conftest import TEST_LIMITS, spec_named, unique_name
from tests.e2e.test_features_e2e import ingest
from tests.unit.test_features import canonical, card_of
from tests.unit.test_fresh_cards import MODEL_ID, RUN_ID, iso, linear_model, offline_scores

TTL = 1.0  # seconds a container trusts the pointer it read


@pytest.fixture()
def fast_stack(tmp_path: Path) -> Iterator[LocalStack]:
    overrides = TEST_LIMITS | {"GALLOP_ALIAS_TTL_SECONDS": str(TTL)}
    stack = LocalStack(
        tmp_path / "state", quiet=True, settings_overrides=overrides, visibility_timeout=1
    ).start()
    try:
        stack.serve_api(free_port())
        yield stack
    finally:
        stack.stop()


def predict(stack: LocalStack, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": stack.api_key, "content-type": "application/json"}
    return httpx.post(f"{stack.api_url}/v1/predict", json=body, headers=headers, timeout=60)


def test_a_card_is_scored_on_the_newest_ready_features_and_can_be_pinned(
    fast_stack: LocalStack, races_spec: DatasetSpec, tmp_path: Path
) -> None:
    stack = fast_stack
    assert stack.api_url is not None and stack.settings is not None
    client = GallopClient(stack.api_url, stack.api_key)
    runners, _ = generate_races(110, seed=17)
    times = sorted(runners["race_time"].unique())
    card = card_of(runners[runners["race_time"] == times[-1]])
    inside_v2 = card_of(runners[runners["race_time"] == times[90]])
    # GIVEN a model trained on v1, the first 80 races' results
    spec = spec_named(races_spec, unique_name("fresh"))
    v1_rows = runners[runners["race_time"] <= times[79]]
    v1 = ingest(client, spec, v1_rows.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, v1, timeout=120)["status"] == "READY"
    data = Store.from_settings(stack.settings)
    manifest = orjson.loads(
        data.get_bytes(features_prefix(spec.name, v1, spec.spec_hash) + MANIFEST_FILE)
    )
    folder = linear_model(tmp_path / "model", spec, v1, manifest)
    publish_model_dir(Store.artifacts_from_settings(stack.settings), RUN_ID, folder)
    first = predict(stack, {"model": MODEL_ID, "rows": card})
    assert first.status_code == 200, first.text
    v1_end = iso(times[79])
    assert first.json()["features_as_of"] == {
        "version_id": v1,
        "data_end": v1_end,
        "snapshot": "online",
    }

    # WHEN a second whole version, with the next races' results, has READY features
    v2_rows = runners[runners["race_time"] < times[-1]]
    upload_id = client.upload_bytes(spec.name, v2_rows.to_csv(index=False).encode(), "csv")
    v2 = client.wait_for_upload(spec.name, upload_id, timeout=60)["version_id"]
    assert client.wait_for_features(spec.name, v2, timeout=120)["status"] == "READY"
    ready_at = time.monotonic()

    # THEN within the TTL the card is completed from v2's snapshot, and says so
    while True:
        reply = predict(stack, {"model": MODEL_ID, "rows": card})
        assert reply.status_code == 200, reply.text
        if reply.json()["features_as_of"]["version_id"] == v2:
            break
        assert time.monotonic() - ready_at < TTL + 2, "the pointer was not picked up"
        time.sleep(0.1)
    fresh = reply.json()
    assert fresh["features_as_of"] == {
        "version_id": v2,
        "data_end": iso(times[-2]),
        "snapshot": "online",
    }
    # AND the runners' form has moved on since v1
    before = [p["score"] for p in first.json()["predictions"]]
    after = [p["score"] for p in fresh["predictions"]]
    assert max(abs(a - b) for a, b in zip(before, after, strict=True)) > 1e-3
    # AND pinned to the snapshot the model was trained on, the old answer comes back
    pinned = predict(stack, {"model": MODEL_ID, "rows": card, "snapshot": "training"}).json()
    assert pinned["features_as_of"] == {
        "version_id": v1,
        "data_end": v1_end,
        "snapshot": "training",
    }
    assert [p["score"] for p in pinned["predictions"]] == pytest.approx(before, abs=1e-6)
    # AND a card for a race v2 already holds is refused, naming both times
    refused = predict(stack, {"model": MODEL_ID, "rows": inside_v2})
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert iso(times[90]) in detail and iso(times[-2]) in detail
    assert predict(stack, {"model": MODEL_ID, "rows": inside_v2, "snapshot": "training"}).is_success
    client.close()


def test_after_an_append_a_card_scores_as_the_whole_history_would(
    fast_stack: LocalStack, races_spec: DatasetSpec
) -> None:
    """The issue's check: trained on a history, the next races' results appended, then a card
    for a later race whose runners ran in those races: the API's scores are the model's
    scores on offline features of the whole history, and features_as_of names the append."""
    stack = fast_stack
    assert stack.api_url is not None and stack.settings is not None
    client = GallopClient(stack.api_url, stack.api_key)
    runners, _ = generate_races(170, seed=29)
    at = pd.to_datetime(runners["race_time"])
    times = sorted(at.unique())
    history, appended = runners[at <= times[129]], runners[(at > times[129]) & (at <= times[159])]
    later = runners[at > times[159]]
    ran = later["horse_id"].isin(appended["horse_id"])
    race = later[later["race_id"] == later.loc[ran, "race_id"].iloc[0]]
    # GIVEN a model trained on the history and promoted
    spec = spec_named(races_spec, unique_name("check"))
    v1 = ingest(client, spec, history.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, v1, timeout=120)["status"] == "READY"
    small = {"num_boost_round": 10, "folds": 2}
    run = client.start_training_run(
        spec.name, version=v1, bases=["lambdarank"], hyperparameters=small
    )
    model = client.wait_for_training_run(run["run_id"], timeout=300)["model"]
    client.promote(model["model_id"])
    # WHEN the next races' results are appended, and their features are READY
    upload_id = client.upload_bytes(spec.name, appended.to_csv(index=False).encode(), "csv",
                                    mode=APPEND)  # fmt: skip
    v2 = client.wait_for_upload(spec.name, upload_id, timeout=60)["version_id"]
    built = client.wait_for_features(spec.name, v2, timeout=120)
    assert built["status"] == "READY" and built["build"]["kind"] == "incremental"
    ready_at = time.monotonic()
    # THEN the card is completed from the appended version's snapshot (within the TTL) ...
    card = card_of(race)
    while (reply := client.predict("champion", card))["features_as_of"]["version_id"] != v2:
        assert time.monotonic() - ready_at < TTL + 2, "the appended snapshot was not picked up"
        time.sleep(0.1)
    # ... and scores as the model scores the offline features of the whole history
    artifacts = Store.artifacts_from_settings(stack.settings)
    prefix = model_prefix(model["model_id"])
    loaded = LoadedModel.from_files(model["model_id"], lambda f: artifacts.get_bytes(prefix + f))
    world = SimpleNamespace(spec=spec, model=loaded)
    whole = canonical(pd.concat([history, appended]), spec)
    offline = offline_scores(world, whole, race)  # type: ignore[arg-type]
    served = [p["score"] for p in reply["predictions"]]
    assert served == pytest.approx(offline, abs=1e-4)
    # AND they are not the scores of the stale history (the runners' form moved on)
    stale = client.predict("champion", card, snapshot="training")
    assert stale["features_as_of"]["version_id"] == v1
    assert (
        max(abs(a["score"] - b) for a, b in zip(stale["predictions"], served, strict=True)) > 1e-3
    )
    client.close()
