"""Monitoring results in the metadata store (SQLite and Postgres), and
GET /v1/models/{id}/monitoring through the real app."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from sqlalchemy import Engine, inspect

from gallop.api.app import create_app
from gallop.ingest.canonical import to_parquet
from gallop.layout import (
    DATA_FILE,
    curated_prefix,
    monitoring_page_key,
)
from gallop.metadata import repo
from gallop.metadata.db import engine_for, migrate, session_scope
from gallop.metadata.models import CaptureFile, Dataset, DatasetVersion, RegisteredModel
from gallop.monitoring.page import (
    DRIFT_COLOUR,
    publish_monitoring_page,
    render_monitoring_page,
    write_monitoring_page,
)
from gallop.monitoring.quality import DayQuality, live_quality, record_live
from gallop.monitoring.status import monitoring_status
from gallop.serving.registry import get_model, model_prefix
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import Store
from tests.conftest import registered_model, unique_name
from tests.unit.test_live_quality import RACES, served_races

KEY = "test-key-123"
MONITORING_TABLES = {"live_quality", "drift_checks", "capture_files"}
TRAINING = {"ndcg@4": 0.60, "race_log_loss": 1.90, "auc": None}


def drift_row(feature: str, psi: float, flagged: bool) -> dict:
    return {
        "feature": feature,
        "psi": psi,
        "ks_statistic": 0.1,
        "ks_p": 0.001 if flagged else 0.5,
        "ks_p_threshold": 0.01,
        "flagged": flagged,
        "missing_share": 0.0,
        "reference_missing_share": 0.0,
        "unseen_share": None,
    }


def add_model(engine: Engine, spec: DatasetSpec, run_id: str) -> RegisteredModel:
    """A registered model of a run, as training leaves it (no files needed here)."""
    dataset, _ = repo.register_dataset(engine, spec)
    assert isinstance(dataset, Dataset)
    stack = {"metrics": {"stack": TRAINING}}
    return get_model(engine, registered_model(engine, dataset, run_id, manifest=stack))


# -- the store -----------------------------------------------------------------------------


def test_migration_0010_goes_down_and_up(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= MONITORING_TABLES
    repo.record_drift_check(engine, "m-" + "1" * 16, 10, [drift_row("a", 0.3, True)])
    migrate(engine, "0009", down=True)
    assert not MONITORING_TABLES & set(inspect(engine).get_table_names())
    migrate(engine)
    assert set(inspect(engine).get_table_names()) >= MONITORING_TABLES
    assert repo.latest_drift_check(engine, "m-" + "1" * 16) is None


def test_a_day_recomputed_replaces_its_figures(engine: Engine) -> None:
    model_id = f"m-{unique_name('q')}"
    first = DayQuality("2026-12-01", 10, 80, {"ndcg@4": 0.5, "auc": math.nan})
    other = DayQuality("2026-12-02", 4, 30, {"ndcg@4": 0.7})
    repo.record_live_quality(engine, model_id, [first, other])
    stored = repo.live_quality_of(engine, model_id)
    assert [(r.day, r.metric, r.value) for r in stored] == [
        (date(2026, 12, 1), "auc", None),  # NaN is kept as no value
        (date(2026, 12, 1), "ndcg@4", 0.5),
        (date(2026, 12, 2), "ndcg@4", 0.7),
    ]
    # results for more races of the first day arrived: the day is replaced whole
    again = DayQuality("2026-12-01", 12, 95, {"ndcg@4": 0.55})
    repo.record_live_quality(engine, model_id, [again])
    repo.record_live_quality(engine, model_id, [again])
    stored = repo.live_quality_of(engine, model_id)
    assert [(r.day, r.metric, r.value, r.groups, r.rows) for r in stored] == [
        (date(2026, 12, 1), "ndcg@4", 0.55, 12, 95),
        (date(2026, 12, 2), "ndcg@4", 0.7, 4, 30),
    ]
    assert len(repo.live_quality_of(engine, model_id, since=date(2026, 12, 2))) == 1


def test_the_latest_drift_check_counts_drifted_features_not_the_score(engine: Engine) -> None:
    model_id = f"m-{unique_name('d')}"
    start = datetime(2026, 12, 1, tzinfo=UTC)
    repo.record_drift_check(engine, model_id, 100, [drift_row("a", 0.1, False)], checked_at=start)
    table = [drift_row("a", 0.4, True), drift_row("b", 0.01, False), drift_row("(score)", 1, True)]
    repo.record_drift_check(
        engine, model_id, 5000, table, start, start + timedelta(hours=6), start + timedelta(days=1)
    )
    latest = repo.latest_drift_check(engine, model_id)
    assert latest is not None
    assert (latest.rows, latest.flagged, latest.table) == (5000, 1, table)
    assert latest.window_end == start + timedelta(hours=6)

    # a feature with no values served has no PSI: kept as null, not as NaN JSON cannot hold
    empty = drift_row("c", math.nan, False) | {"ks_p": math.inf}
    repo.record_drift_check(engine, model_id, 10, [empty], checked_at=start + timedelta(days=2))
    latest = repo.latest_drift_check(engine, model_id)
    assert latest is not None
    assert latest.table == [empty | {"psi": None, "ks_p": None}]


def test_capture_files_are_the_monitors_cursor(engine: Engine) -> None:
    model_id = f"m-{unique_name('c')}"
    keys = [f"capture/races/{model_id}/date=2026-12-06/part-{i}" for i in range(3)]
    assert repo.unread_capture_keys(engine, keys) == keys
    before = datetime.now(UTC) - timedelta(seconds=1)
    files = [CaptureFile(key=k, dataset="races", model_id=model_id, rows=100) for k in keys[:2]]
    assert repo.record_capture_files(engine, files) == 2
    again = [CaptureFile(key=k, dataset="races", model_id=model_id, rows=7) for k in keys[1:]]
    assert repo.record_capture_files(engine, again) == 1  # the second key was read already
    assert repo.unread_capture_keys(engine, keys) == []
    assert repo.captured_rows_read(engine, model_id) == 207
    assert repo.captured_rows_read(engine, model_id, since=before) == 207
    assert repo.captured_rows_read(engine, model_id, since=datetime.now(UTC)) == 0


# -- the route -----------------------------------------------------------------------------


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path, api_keys=KEY, artifacts_bucket="artifacts")


@pytest.fixture()
def artifacts() -> Iterator[Store]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        yield Store("artifacts", s3)


@pytest.fixture()
def app(settings: Settings, artifacts: Store) -> Iterator[tuple[TestClient, Engine]]:
    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    with TestClient(create_app(settings, artifacts=artifacts), headers={"x-api-key": KEY}) as c:
        yield c, engine


def test_monitoring_of_a_model_not_watched_yet(
    app: tuple[TestClient, Engine], races_spec: DatasetSpec
) -> None:
    api, engine = app
    model = add_model(engine, races_spec, "ab" * 10)
    reply = api.get(f"/v1/models/{model.model_id}/monitoring")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_id"] == model.model_id and body["dataset"] == "races"
    assert body["training"] == TRAINING
    assert (body["live"], body["drift"], body["page_url"]) == ([], None, None)
    assert {a["name"]: a["state"] for a in body["alarms"]} == {
        "feature_drift": "INSUFFICIENT_DATA",
        "live_quality": "INSUFFICIENT_DATA",
    }


def test_monitoring_shows_what_the_monitor_stored_and_the_alarms_it_raises(
    app: tuple[TestClient, Engine], races_spec: DatasetSpec, artifacts: Store
) -> None:
    # GIVEN live figures computed from captured races, a week inside the alarm window
    api, engine = app
    model = add_model(engine, races_spec, "cd" * 10)
    captured, results = served_races(48)
    today = datetime.now(UTC).date()
    shift = today - timedelta(days=2) - date(2026, 12, 1)  # the three days end today
    captured.at = captured.at + (shift.days * 86_400 * 10**6)
    quality = live_quality(captured, results, RACES)
    repo.record_live_quality(engine, model.model_id, quality.days)
    table = [drift_row("draw", 0.41, True), drift_row("age", 0.02, False)]
    repo.record_drift_check(engine, model.model_id, 5000, table)
    key = monitoring_page_key(model_prefix(model.model_id))
    artifacts.put_bytes(key, b"<html></html>", "text/html; charset=utf-8")

    body = api.get(f"/v1/models/{model.model_id}/monitoring").json()

    # THEN the figures are the live computation's, day by day
    assert [d["day"] for d in body["live"]] == [d.day for d in quality.days]
    for shown, computed in zip(body["live"], quality.days, strict=True):
        assert (shown["groups"], shown["rows"]) == (computed.groups, computed.rows)
        assert shown["metrics"] == pytest.approx(computed.metrics)
    assert [f["feature"] for f in body["drift"]["features"]] == ["draw", "age"]
    assert body["drift"]["rows"] == 5000 and body["drift"]["flagged"] == 1
    assert key in body["page_url"]
    # random scores are far worse than a training NDCG@4 of 0.6
    weighted = sum(d.groups * d.metrics["ndcg@4"] for d in quality.days) / 48
    assert weighted < TRAINING["ndcg@4"] * 0.95
    alarms = {a["name"]: a for a in body["alarms"]}
    assert (
        alarms["feature_drift"]["state"] == "ALARM" and "draw" in alarms["feature_drift"]["reason"]
    )
    assert alarms["live_quality"]["state"] == "ALARM"
    assert f"{weighted:.4f}" in alarms["live_quality"]["reason"]


def test_quality_within_the_margin_and_no_drift_are_ok(
    app: tuple[TestClient, Engine], races_spec: DatasetSpec
) -> None:
    api, engine = app
    model = add_model(engine, races_spec, "ef" * 10)
    today = datetime.now(UTC).date()
    old = (today - timedelta(days=30)).isoformat()  # outside the window: not judged
    days = [
        DayQuality(old, 50, 400, {"ndcg@4": 0.1}),
        DayQuality(today.isoformat(), 20, 160, {"ndcg@4": 0.58}),  # 3.3 % worse
    ]
    repo.record_live_quality(engine, model.model_id, days)
    repo.record_drift_check(engine, model.model_id, 5000, [drift_row("age", 0.02, False)])
    alarms = api.get(f"/v1/models/{model.model_id}/monitoring").json()["alarms"]
    assert [a["state"] for a in alarms] == ["OK", "OK"]


def test_monitoring_of_an_unknown_model_is_404_and_needs_a_key(
    app: tuple[TestClient, Engine],
) -> None:
    api, _ = app
    reply = api.get("/v1/models/m-0123456789abcdef/monitoring")
    assert reply.status_code == 404 and reply.json()["code"] == "not_found"
    assert (
        api.get("/v1/models/m-0123456789abcdef/monitoring", headers={"x-api-key": ""}).status_code
        == 401
    )
    document = api.get("/openapi.json").json()
    responses = document["paths"]["/v1/models/{model_id}/monitoring"]["get"]["responses"]
    assert {"200", "401", "404"} <= set(responses)


def test_the_monitoring_page_draws_calibration_quality_over_time_and_psi(
    app: tuple[TestClient, Engine], races_spec: DatasetSpec, artifacts: Store
) -> None:
    # GIVEN a model with live figures (one day's NDCG unknown) and a drift check whose
    # feature names a browser would take for markup
    api, engine = app
    model = add_model(engine, races_spec, "0a" * 10)
    captured, results = served_races(48)
    quality = live_quality(captured, results, RACES)
    quality.days[1].metrics["ndcg@4"] = math.nan
    repo.record_live_quality(engine, model.model_id, quality.days)
    table = [drift_row("<b>draw</b>", 0.41, True), drift_row("age", 0.02, False)]
    table.append(drift_row("(score)", 0.3, True))
    repo.record_drift_check(engine, model.model_id, 5000, table)
    status = monitoring_status(engine, model, 7, 0.05, today=date(2026, 12, 3))

    # WHEN the page is rendered and put beside the model's report
    html = render_monitoring_page(status, quality.calibration, psi_threshold=0.25)
    key = write_monitoring_page(artifacts, model.model_id, html)

    # THEN three charts, no script and nothing fetched, names escaped, NaN left out
    assert key == monitoring_page_key(model_prefix(model.model_id))
    assert html.count("<svg") == 3 and "<script" not in html.lower()
    assert "src=" not in html and "href=" not in html
    assert "&lt;b&gt;draw&lt;/b&gt;" in html and "<b>draw" not in html
    assert "nan" not in html.lower()
    over_time = html.split('id="over-time"')[1].split("</section>")[0]
    assert over_time.count("<circle") == len(quality.days) - 1  # the NaN day is no point
    assert "stroke-dasharray" in over_time  # the training figure's line
    psi = html.split('id="psi"')[1].split("</section>")[0]
    assert psi.count('class="bar"') == 3 and 'class="threshold"' in psi
    assert psi.count(f'fill="{DRIFT_COLOUR}"') == 2 and "ALARM" in html  # drifted: red
    body = api.get(f"/v1/models/{model.model_id}/monitoring").json()
    assert body["page_url"] and key in body["page_url"]
    assert artifacts.get_bytes(key).decode() == html
    # the monitor run's one call renders the same from the store, for today's window
    settings = Settings(monitor_window_days=7, quality_margin=0.05, drift_psi_threshold=0.25)
    assert publish_monitoring_page(engine, artifacts, model, quality.calibration, settings) == key
    assert artifacts.get_bytes(key).decode().count("<svg") == 3


def test_record_live_scores_against_the_newest_version_of_the_models_dataset(
    app: tuple[TestClient, Engine], races_spec: DatasetSpec, artifacts: Store
) -> None:
    # GIVEN a model of the races dataset, races it served, and no results yet
    api, engine = app
    model = add_model(engine, races_spec, "1b" * 10)
    captured, results = served_races(20)
    data = Store("data", artifacts.s3)
    data.s3.create_bucket(Bucket="data")
    waiting = record_live(engine, data, model, captured)
    assert waiting.days == [] and waiting.counts.pending == len(captured)

    # WHEN the results arrive as a version (the spec's columns, as ingest stores them)
    stored = results.assign(race_time=pd.Timestamp("2026-12-01"), distance_m=1600.0)
    dataset = repo.get_dataset(engine, races_spec.name)
    key = curated_prefix(dataset.name, "v-1") + DATA_FILE
    data.put_bytes(key, to_parquet(stored), "application/vnd.apache.parquet")
    with session_scope(engine) as session:
        session.add(
            DatasetVersion(
                dataset_id=dataset.id,
                version_id="v-1",
                status="VALID",
                content_hash="0" * 64,
                source_key="raw/races/x.csv",
                data_key=key,
                report={},
                parts=[key],
            )
        )
    quality = record_live(engine, data, model, captured)

    # THEN the stored figures are the live computation's, and the API shows them
    assert quality.counts.scored == len(captured)
    assert quality == live_quality(captured, results, RACES)
    shown = api.get(f"/v1/models/{model.model_id}/monitoring").json()["live"]
    assert [d["metrics"] for d in shown] == [pytest.approx(d.metrics) for d in quality.days]


ANSWERED = b'{"checks": [], "renewals": [{"dataset": "races", "recommendation": "keep"}]}'


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"Payload": ANSWERED, "StatusCode": 200}, 200),
        (
            {"Payload": b'{"errorMessage": "boom"}', "StatusCode": 200, "FunctionError": "Un"},
            502,
        ),
        ("TooManyRequestsException", 503),
    ],
)
def test_on_aws_a_check_now_is_the_monitor_functions_answer(
    tmp_path: Path, answer: object, status: int
) -> None:
    """On AWS the API has no data image: it invokes the monitor function (what it sends,
    and each of its answers as the API passes it on)."""
    from botocore.stub import Stubber

    from gallop import aws
    from gallop.api.monitoring import INVOKE_SECONDS

    settings = Settings(
        state_dir=tmp_path,
        api_keys=KEY,
        monitor_function_name="gallop-monitor",
        aws_region="eu-west-1",
    )
    migrate(engine_for(settings.sqlalchemy_url))
    lambda_ = aws.client("lambda", settings, read_timeout=INVOKE_SECONDS)
    sent = {"FunctionName": "gallop-monitor", "Payload": b'{"dataset": null, "force": true}'}
    with (
        Stubber(lambda_) as stub,
        TestClient(create_app(settings), headers={"x-api-key": KEY}) as api,
    ):
        if isinstance(answer, str):
            stub.add_client_error("invoke", answer, http_status_code=429, expected_params=sent)
        else:
            stub.add_response("invoke", {**answer, "Payload": io.BytesIO(answer["Payload"])}, sent)
        reply = api.post("/v1/monitoring/checks", json={})
        stub.assert_no_pending_responses()
    assert reply.status_code == status, reply.text
    if status == 200:
        assert reply.json() == json.loads(ANSWERED)
    else:
        assert reply.headers["content-type"] == "application/problem+json"
    aws.reset_clients()
