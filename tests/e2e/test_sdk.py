"""gallop.Client as a notebook uses it, against the local stack: DataFrames in, a run
that waits, DataFrames out; and the downloaded model scoring the same on this machine."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gallop
from gallop.local.stack import LocalStack
from gallop.sdk import UploadRejected
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from tests.conftest import spec_named, unique_name

SMALL = {"num_boost_round": 20, "folds": 3}


def test_a_notebook_uploads_trains_predicts_and_explains_with_dataframes(
    stack: LocalStack, races_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the API's URL and key in the environment, as a notebook would have them
    assert stack.api_url is not None
    monkeypatch.setenv("GALLOP_API_URL", stack.api_url)
    monkeypatch.setenv("GALLOP_API_KEY", stack.api_key)
    client = gallop.Client()
    runners, _ = generate_races(120, seed=21)
    last = runners["race_id"].iloc[-1]
    history = runners[runners["race_id"] != last]
    # the card: what is known before the off (no result)
    card = runners[runners["race_id"] == last].drop(columns=["position"])
    spec = spec_named(races_spec, unique_name("sdk"))

    # WHEN a DataFrame is uploaded under a new dataset's spec
    version = client.upload(history, dataset=spec.name, spec=spec)
    # THEN the call returns once it is validated
    assert version["status"] == "VALID" and version["row_count"] == len(history)

    # WHEN a run is trained on it and waited for
    run = client.train(spec.name, bases=["lambdarank", "linear"], hyperparameters=SMALL)
    run.wait(timeout=600)
    # THEN the leaderboard holds the stack and each base with their held-out metrics
    assert run.status == "SUCCEEDED" and run.model_id == f"m-{run.run_id}"
    board = run.leaderboard()
    assert board.index.tolist() == ["stack", "lambdarank", "linear"]
    assert board.loc["stack", "ndcg@1"] == pytest.approx(run.metrics["ndcg@1"])
    assert board["weight"].iloc[1:].notna().all() and board["weight"].iloc[1:].ge(0).all()
    assert run.model_id in set(client.models(spec.name)["model_id"])

    # WHEN the model is champion and a race card is scored and explained
    client.promote(run.model_id)
    predicted = client.predict(card)
    explained = client.explain(card, top_k=3)
    # THEN each runner has its prediction on the card's index, the race's chances add up
    assert predicted.attrs["model_id"] == run.model_id
    assert predicted.index.equals(card.index)
    assert predicted["win_probability"].sum() == pytest.approx(1.0)
    assert sorted(predicted["rank"]) == list(range(1, len(card) + 1))
    # AND each explanation's parts add up to its score
    features = [c for c in explained.columns if c not in ("score", "base_value", "reasons")]
    parts = explained["base_value"] + explained[features].sum(axis=1)
    assert np.allclose(parts, explained["score"])
    assert explained["reasons"].map(len).eq(3).all()

    # WHEN the model is downloaded and loaded here
    local = gallop.load_model(client.download(run.model_id, tmp_path / "model"))
    # THEN it scores the race's feature rows as the API does
    computed = client.api.card_features(
        spec.name, version["version_id"], card.to_dict(orient="records")
    )
    rows = pd.DataFrame(computed["rows"], columns=computed["features"])[local.features]
    rows["race_id"] = last
    served = client.predict(rows, model=run.model_id)
    pd.testing.assert_frame_equal(local.predict(rows), served, rtol=1e-6)
    assert np.allclose(local.explain(rows)["score"], served["score"], rtol=1e-5)
    client.close()


def test_a_rejected_upload_raises_with_its_report(
    stack: LocalStack, races_spec: DatasetSpec
) -> None:
    assert stack.api_url is not None
    spec = spec_named(races_spec, unique_name("sdkbad"))
    runners, _ = generate_races(10, seed=3)
    with (
        gallop.Client(stack.api_url, stack.api_key) as client,
        pytest.raises(UploadRejected, match="REJECTED") as rejected,
    ):
        client.upload(runners.drop(columns=["horse_id"]), dataset=spec.name, spec=spec)
    assert rejected.value.version["report"]["errors"]


def test_append_sends_the_days_results_as_an_append_and_returns_its_version(
    stack: LocalStack, races_spec: DatasetSpec, tmp_path: Path
) -> None:
    # GIVEN a dataset's history uploaded, and the day's results, as a DataFrame and a file
    assert stack.api_url is not None
    spec = spec_named(races_spec, unique_name("sdkgrow"))
    runners, _ = generate_races(30, seed=5)
    races = runners["race_id"].unique()
    day_one, day_two = runners["race_id"].isin(races[-4:-2]), runners["race_id"].isin(races[-2:])
    runners[day_two].to_csv(tmp_path / "day-two.csv", index=False)
    with gallop.Client(stack.api_url, stack.api_key) as client:
        history = client.upload(runners[~(day_one | day_two)], dataset=spec.name, spec=spec)
        # WHEN each day is appended
        first = client.append(runners[day_one], dataset=spec.name)
        second = client.append(tmp_path / "day-two.csv", dataset=spec.name)
        uploads = client.api.uploads(spec.name)
    # THEN each went up as an append (under raw/{dataset}/append/) and its VALID version,
    # with its lineage fields, is returned
    for version, parent in ((first, history), (second, first)):
        assert version["status"] == "VALID"
        assert version["source_key"].startswith(f"raw/{spec.name}/append/")
        assert version["parent_version_id"] == parent["version_id"]
    assert (first["rows_added"], second["rows_added"]) == (day_one.sum(), day_two.sum())
    assert [(u["mode"], u["corrections"]) for u in uploads] == [
        ("replace", False),
        ("append", False),
        ("append", False),
    ]


def test_a_client_without_url_or_key_says_how_to_give_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GALLOP_API_URL", raising=False)
    monkeypatch.delenv("GALLOP_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GALLOP_API_URL and GALLOP_API_KEY"):
        gallop.Client()


def test_the_readme_sdk_section_names_every_public_method() -> None:
    from gallop.sdk import Client, LocalModel, Run

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Python SDK", 1)[1].split("\n### ", 1)[0]
    public = {
        f"{kind.__name__}.{name}": name
        for kind in (Client, Run, LocalModel)
        for name in vars(kind)
        if not name.startswith("_")
    }
    # named as code: `name(...)`, `.name`, client.name(...)
    missing = [where for where, name in public.items() if not re.search(rf"[`.]{name}\b", section)]
    assert missing == [], "the README's SDK section does not name " + ", ".join(missing)
