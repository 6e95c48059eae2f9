"""The issue's check, through the local stack: a trained champion answers race cards and
feature rows, which are captured (Firehose → S3); the cards' results are appended, and
GET /v1/models/{id}/monitoring shows live figures equal to the training metric functions
run on the replies and the results; feature rows sent with one feature shifted raise drift
on that feature and not on an untouched one; `gallop monitor` prints the table; the
monitoring page opens with its plots."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from gallop.client import GallopClient
from gallop.features.build import build_features
from gallop.local.stack import LocalStack, free_port
from gallop.monitoring.capture import read_captured
from gallop.monitoring.run import Monitor
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.metrics import ranking_metrics
from tests.conftest import TEST_LIMITS, spec_named, unique_name
from tests.e2e.test_features_e2e import ingest
from tests.unit.test_features import card_of

GALLOP = Path(sys.executable).with_name("gallop")
SMALL = {"num_boost_round": 20, "folds": 2}
SHIFTED, UNTOUCHED = "weight_kg", "horse_position_mean_5"
DRIFT_ROWS = 2000


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(
        tmp_path / "state", quiet=True, settings_overrides=TEST_LIMITS, visibility_timeout=1
    ).start()
    try:
        stack.serve_api(free_port())
        yield stack
    finally:
        stack.stop()


def _wait(what: str, ready: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)
    return found


def _feature_rows(history: pd.DataFrame, spec: DatasetSpec, names: list[str]) -> list[dict]:
    """Full feature rows, as a client that computes its own features sends them (the
    categories as their text), for the history's last races."""
    built = build_features(history, spec)
    frame = built.frame.tail(DRIFT_ROWS)
    rows = []
    for record in frame.to_dict("records"):
        row: dict[str, Any] = {"race_id": str(record["race_id"])}
        for name in names:
            value = record[name]
            vocabulary = built.manifest["categorical"].get(name)
            if vocabulary is not None:
                value = None if np.isnan(value) else vocabulary[int(value)]
            else:
                value = None if np.isnan(value) else float(value)
            row[name] = value
        rows.append(row)
    return rows


def test_captured_cards_meet_their_results_and_a_shifted_feature_raises_drift(
    stack: LocalStack, races_spec: DatasetSpec, tmp_path: Path
) -> None:
    assert stack.api_url is not None and stack.settings is not None
    client = GallopClient(stack.api_url, stack.api_key)
    runners, _ = generate_races(170, seed=41)
    at = pd.to_datetime(runners["race_time"])
    times = sorted(at.unique())
    history, later = runners[at <= times[129]], runners[at > times[129]]

    # GIVEN a champion trained on 130 races
    spec = spec_named(races_spec, unique_name("watch"))
    version = ingest(client, spec, history.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, version, timeout=120)["status"] == "READY"
    run = client.start_training_run(spec.name, bases=["lambdarank"], hyperparameters=SMALL)
    model_id = client.wait_for_training_run(run["run_id"], timeout=600)["model"]["model_id"]
    client.promote(model_id)
    model = client.model(model_id)

    # WHEN it answers the next 40 races' cards, and feature rows with one feature shifted
    served: list[pd.DataFrame] = []
    for race_id, race in later.groupby("race_id", sort=False):
        reply = client.predict("champion", rows=card_of(race))
        served.append(
            pd.DataFrame(
                {
                    "race_id": str(race_id),
                    "horse_id": race["horse_id"].astype(str).to_numpy(),
                    "score": [p["score"] for p in reply["predictions"]],
                    "win_probability": [p["win_probability"] for p in reply["predictions"]],
                }
            )
        )
    # (a check now, on the cards alone, is too few rows to say anything about drift)
    [early] = Monitor(stack.settings, metrics_out=io.StringIO()).run(spec.name, force=True)
    assert early.drift is None and "a drift check needs 1,000" in str(early.drift_skipped)
    rows = _feature_rows(history, spec, model["features"])
    for row in rows:
        row[SHIFTED] = row[SHIFTED] + 40.0  # every horse 40 kg heavier than any in training
    for start in range(0, len(rows), 1000):
        client.predict("champion", rows=rows[start : start + 1000])
    # THEN every row served is captured under capture/{dataset}/{model}/date=.../
    data = Store.from_settings(stack.settings)
    n_served = len(later) + len(rows)

    def all_captured() -> Any:
        found = read_captured(data, spec.name, model_id)
        return found if len(found) == n_served else None

    captured = _wait("the capture", all_captured)
    assert all(k.startswith(f"capture/{spec.name}/{model_id}/date=") for k in captured.keys)

    # WHEN the cards' results are appended
    appended = client.upload_bytes(
        spec.name, later.to_csv(index=False).encode(), "csv", mode="append"
    )
    assert client.wait_for_upload(spec.name, appended, timeout=60)["status"] == "VALID"

    # THEN the monitor, told by ingest, shows live figures equal to the training metric
    # functions run on the replies and the results (the feature rows are of races
    # already in the history: the append holds no result for them)
    monitoring = _wait(
        "live figures", lambda: (m := client.monitoring(model_id))["live"] and m, timeout=120
    )
    [day] = monitoring["live"]
    offline = _offline_metrics(pd.concat(served, ignore_index=True), later, spec)
    assert day["groups"] == later["race_id"].nunique() and day["rows"] == len(later)
    for name in ("ndcg@1", "ndcg@3", "ndcg@4", "race_log_loss", "top1_hit_rate", "ece"):
        assert day["metrics"][name] == pytest.approx(offline[name], abs=1e-9), name

    # WHEN a person runs gallop monitor
    command = [str(GALLOP), "monitor", "--dataset", spec.name]
    command += ["--api", stack.api_url, "--api-key", stack.api_key]
    shown = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    reply = json.loads(shown.stdout)
    [check] = reply["checks"]
    # THEN the shifted feature drifted, and an untouched one did not; renewal had nothing
    # to do (the dataset has no policy and no challenger)
    assert reply["renewals"] == [
        {"dataset": spec.name, "expired": [], "recommendation": None, "retraining": None}
    ]
    table = {row["feature"]: row for row in check["drift"]}
    assert table[SHIFTED]["psi"] > 0.25 and table[SHIFTED]["flagged"]
    assert table[UNTOUCHED]["psi"] < 0.1
    assert check["rows"] == n_served
    # AND the table is printed for a person, exit 0
    printed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    line = next(x for x in printed.stdout.splitlines() if x.startswith(SHIFTED + " "))
    assert "DRIFTED" in line
    assert "feature_drift  ALARM" in printed.stdout

    # AND a scheduled run (not forced) leaves drift until enough new predictions came,
    # and publishes what the alarms watch as EMF lines
    lines = io.StringIO()
    [scheduled] = Monitor(stack.settings, metrics_out=lines).run(spec.name)
    assert scheduled.drift is None and scheduled.new_rows == 0
    assert scheduled.drift_skipped == "0 predictions since the last check, 5000 make one due"
    emitted = [json.loads(line) for line in lines.getvalue().splitlines()]
    [per_model] = [e for e in emitted if "LiveNDCG4" in e]
    assert per_model["model"] == model_id and per_model["dataset"] == spec.name
    assert per_model["LiveNDCG4"] == pytest.approx(offline["ndcg@4"], abs=1e-9)
    dimensions = per_model["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert dimensions == [["service"], ["service", "dataset", "model"]]
    # AND a forced run publishes drift per feature
    lines = io.StringIO()
    Monitor(stack.settings, metrics_out=lines).run(spec.name, force=True)
    emitted = [json.loads(line) for line in lines.getvalue().splitlines()]
    psi = {e["feature"]: e["FeaturePSI"] for e in emitted if "FeaturePSI" in e}
    assert psi[SHIFTED] == pytest.approx(table[SHIFTED]["psi"]) and psi[SHIFTED] > 0.25
    assert next(e for e in emitted if "DriftedFeatures" in e)["DriftedFeatures"] >= 1

    # AND the monitoring API and page say the same, the page with its plots
    monitoring = client.monitoring(model_id)
    assert {a["name"]: a["state"] for a in monitoring["alarms"]}["feature_drift"] == "ALARM"
    page = httpx.get(monitoring["page_url"], timeout=30)
    assert page.status_code == 200 and page.text.startswith("<!DOCTYPE html>")
    for section in ('id="calibration"', 'id="over-time"', 'id="psi"'):
        assert section in page.text and "<svg" in page.text.split(section, 1)[1]
    client.close()


def _offline_metrics(served: pd.DataFrame, results: pd.DataFrame, spec: DatasetSpec) -> dict:
    """The training report's metric functions on what the replies said and the results."""
    from gallop.training.outcomes import race_results

    known = results.assign(race_id=results["race_id"].astype(str))
    known = known.assign(horse_id=known["horse_id"].astype(str))
    joined = served.merge(known, on=["race_id", "horse_id"], validate="one_to_one")
    manifest = {"group": "race_id", "target": spec.target, "target_order": "ascending"}
    share, relevance = race_results(joined, manifest)  # type: ignore[arg-type]
    sizes = joined.groupby("race_id", sort=False).size().to_numpy()
    return ranking_metrics(
        joined["score"].to_numpy(),
        joined["win_probability"].to_numpy(),
        relevance,
        share,
        sizes,
    )
