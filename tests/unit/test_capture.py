"""Capture's reply-path side and its pieces: the sample hash, the batch limits, a full
queue, and the local Firehose's reading of the partitioning query."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from gallop.layout import CAPTURE_ERROR_PREFIX, CAPTURE_PARTITION_QUERY, CAPTURE_PREFIX
from gallop.local.firehose import UnsupportedQuery, fill_prefix, parse_query, partition_keys
from gallop.monitoring.capture import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    Capture,
    Served,
    Shadow,
    _chunks,
    correlation_id,
    entity_column,
    records,
    sampled,
)
from gallop.serving.model import LoadedModel, session_for
from gallop.serving.predict import predict_columns


def ranker() -> LoadedModel:
    from gallop.models.linear import LinearModel
    from gallop.models.onnx_export import stack_to_onnx

    wide = np.full(2, 3e38)
    line = LinearModel(np.zeros(2), np.ones(2), np.array([1.0, 2.0]), 0.0, -wide, wide)
    graph = stack_to_onnx([line], [1.0], 0.0, 2).SerializeToString()
    manifest: Any = {
        "task": "ranking",
        "features": ["x0", "going"],
        "categorical": {"going": ["firm", "soft"]},
        "group": "race",
        "identifiers": ["race", "runner"],
        "dataset": None,
        "onnx_input": "features",
        "onnx_outputs": ["score", "margins"],
    }
    return LoadedModel("m-0123456789abcdef", manifest, session_for(graph), lambda name: b"")


def test_the_sample_is_a_stable_share_of_keys() -> None:
    keys = [f"race-{i}" for i in range(4000)]
    half = [k for k in keys if sampled(k, 0.5)]
    assert 0.45 < len(half) / len(keys) < 0.55
    assert half == [k for k in keys if sampled(k, 0.5)]  # the same answer every time
    assert all(sampled(k, 1.0) for k in keys) and not any(sampled(k, 0.0) for k in keys)
    assert set(k for k in keys if sampled(k, 0.2)) <= set(half)  # a smaller share, a subset


def test_the_correlation_id_is_the_gateways_then_the_callers_then_new() -> None:
    assert correlation_id({"requestContext": {"requestId": "gw"}}, "mine") == "gw"
    assert correlation_id({"requestContext": {}}, "mine") == "mine"
    made = correlation_id(None, None)
    assert len(made) == 36 and made != correlation_id(None, None)


def test_a_record_per_row_holds_what_the_model_saw_and_answered() -> None:
    model = ranker()
    columns = ["race", "runner", "x0", "going"]
    values = [["r1", 7, 1.5, "soft"], ["r1", 8, None, "heavy"]]
    reply = predict_columns(model, columns, values)
    served = Served(
        0.0, model, "champion", columns, values, None, None, reply["predictions"], "q", None
    )
    first, second = records(served)
    assert first["at"] == "1970-01-01T00:00:00.000000+00:00"
    assert first["dataset"] == "_" and first["alias"] == "champion" and first["task"] == "ranking"
    assert (first["group"], first["entity"], first["row"]) == ("r1", "7", 0)
    assert first["features"].tolist() == [1.5, 1.0]
    assert np.isnan(second["features"]).tolist() == [True, True]  # null, and unseen "heavy"
    assert second["categories"] == {"going": "heavy"}
    assert first["outputs"] == reply["predictions"][0]
    assert entity_column(model) == "runner"


def test_a_race_id_sent_as_a_number_is_recorded_as_its_results_name_it() -> None:
    # A JSON number 1001 (or 1001.0) is the race "1001" in the results' text ids: the same
    # text, or the captured race would never meet its results.
    model = ranker()
    columns = ["race", "runner", "x0", "going"]
    for race in (1001, 1001.0):
        values = [[race, 7, 1.5, "soft"], [race, 8.0, 0.5, "firm"]]
        reply = predict_columns(model, columns, values)
        served = Served(
            0.0, model, None, columns, values, None, None, reply["predictions"], "q", None
        )
        assert [(r["group"], r["entity"]) for r in records(served)] == [
            ("1001", "7"),
            ("1001", "8"),
        ]


def test_batches_keep_to_firehoses_limits() -> None:
    failed: list[int] = []
    small = [(("d", "m"), b"x" * 100)] * 1200
    assert [len(c) for c in _chunks(small, lambda key, failures: failed.append(failures))] == [
        MAX_BATCH_RECORDS,
        MAX_BATCH_RECORDS,
        200,
    ]
    big = [(("d", "m"), b"x" * 900_000)] * 10 + [(("d", "m"), b"x" * 2_000_000)]
    chunks = list(_chunks(big, lambda key, failures: failed.append(failures)))
    assert all(sum(len(d) for _, d in c) <= MAX_BATCH_BYTES for c in chunks)
    assert sum(len(c) for c in chunks) == 10 and failed == [1]  # the record over 1,000 KiB


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    # GIVEN a sender stuck making its client (as in a slow outage), and room for 2 requests
    entered, release = threading.Event(), threading.Event()

    def stuck_client() -> Any:
        entered.set()
        release.wait(30)
        raise ConnectionError("no Firehose here")

    out = io.StringIO()
    capture = Capture("s", stuck_client, max_queued=2, out=out)
    model = ranker()
    columns = ["race", "runner", "x0", "going"]
    values = [["r1", 1, 1.0, "firm"], ["r1", 2, 2.0, "soft"], ["r1", 3, 0.5, None]]
    predictions = predict_columns(model, columns, values)["predictions"]
    # WHEN 10 requests of 3 rows are captured, the first one taken by the sender
    capture.capture(model, None, columns, values, predictions, "q0")
    assert entered.wait(30)
    for i in range(1, 10):
        capture.capture(model, None, columns, values, predictions, f"q{i}")
    # THEN the sender holds one, the queue two, and the other 7 (21 rows) were dropped
    assert capture.totals.dropped == 21
    release.set()
    assert capture.flush(timeout=30)
    assert (capture.totals.captured, capture.totals.failures) == (0, 9)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line.get("CaptureDropped", 0) for line in lines) == 21
    assert sum(line.get("CaptureFailures", 0) for line in lines) == 9
    assert {line["dataset"] for line in lines} == {"_"}


def test_shadow_jobs_a_full_queue_cannot_take_or_that_fail_are_counted_as_shadow() -> None:
    # GIVEN a sender stuck making its client, and room for two requests (shadows: one)
    entered, release = threading.Event(), threading.Event()

    def stuck_client() -> Any:
        entered.set()
        release.wait(30)
        raise ConnectionError("no Firehose here")

    out = io.StringIO()
    capture = Capture("s", stuck_client, max_queued=2, out=out)
    model = ranker()
    columns = ["race", "runner", "x0", "going"]
    values = [["r1", 1, 1.0, "firm"], ["r1", 2, 2.0, "soft"]]
    predictions = predict_columns(model, columns, values)["predictions"]
    scored: list[str] = []

    def score() -> Served:
        scored.append("ran")
        raise ValueError("the challenger takes other features")

    capture.capture(model, None, columns, values, predictions, "q0")
    assert entered.wait(30)
    # WHEN a shadow job that fails is queued, then one more finds the shadows' half full
    capture.shadow(Shadow("m-fedcba9876543210", "races", 2, score))
    capture.shadow(Shadow("m-fedcba9876543210", "races", 2, score))
    assert capture.totals.shadow_dropped == 2
    # AND a served request still has its room
    capture.capture(model, None, columns, values, predictions, "q1")
    assert capture.totals.dropped == 0
    release.set()
    assert capture.flush(timeout=30)
    # THEN the one taken ran in the sender and its failure is the shadow model's count
    assert scored == ["ran"] and capture.totals.shadow_failures == 2
    assert capture.totals.failures == 4  # the two served requests' rows: no Firehose
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    shadow = [line for line in lines if line["model"] == "m-fedcba9876543210"]
    assert sum(line.get("ShadowDropped", 0) for line in shadow) == 2
    assert sum(line.get("ShadowFailures", 0) for line in shadow) == 2
    assert all("ShadowDropped" not in line for line in lines if line not in shadow)


def test_a_capture_needs_a_stream_and_a_share_from_0_to_1() -> None:
    with pytest.raises(ValueError, match="stream"):
        Capture("", lambda: None)
    with pytest.raises(ValueError, match="capture_sample"):
        Capture("s", lambda: None, sample=1.5)


def test_the_local_firehose_reads_the_partitioning_query_as_aws_does() -> None:
    fields = parse_query(CAPTURE_PARTITION_QUERY)
    assert fields == {"dataset": "dataset", "model": "model_id"}
    keys = partition_keys(b'{"dataset": "races", "model_id": "m-1", "row": 0}\n', fields)
    assert keys == {"dataset": "races", "model": "m-1"}
    at = datetime(2026, 12, 6, 23, 59, tzinfo=UTC)
    assert fill_prefix(CAPTURE_PREFIX, keys, at) == "capture/races/m-1/date=2026-12-06/"
    failed = fill_prefix(CAPTURE_ERROR_PREFIX, {}, at, "partitioning-failed")
    assert failed == "capture-errors/partitioning-failed/date=2026-12-06/"
    assert partition_keys(b"not json", fields) is None
    assert partition_keys(b'{"dataset": "races"}', fields) is None  # model_id missing
    with pytest.raises(UnsupportedQuery):
        parse_query("{dataset: .a | ascii_downcase}")
