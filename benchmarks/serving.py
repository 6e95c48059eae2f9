"""Serving latency, cold start and a load test, in one run:

    .venv/bin/python -m benchmarks.serving [--calls 3000] [--load-seconds 60]

- Warm latency through the predict Lambda handler (an API Gateway REST event -> Mangum
  -> FastAPI -> validation -> ONNX -> orjson reply) for a 12-runner race, p50/p99, next
  to the bare InferenceSession.run on the same rows and to the naive Python path
  (native LightGBM boosters + the numpy meta-learner), with the handler's time split
  into parse/validate, session and the rest (probabilities, serialise, framework).
- The same race sent as a race card (ids and pre-race fields), completed from the
  entity snapshot the online pointer names: the handler's p50/p99, and the completion
  alone (pointer lookup, card checks, features from the snapshot) reported separately.
- Cold start in a fresh process: import the handler, load the model from the local S3
  (moto server), first reply: total and split.
- Capture's cost (issue #13: at most 0.1 ms on the handler's p99): the 12-runner predict
  handler with capture off and on (sending to the local Firehose), in one process,
  interleaved in blocks so both see the same machine; p50/p99 of each and the
  difference, the capture call alone, and what the sender delivered or dropped.
  `--capture-only` runs just this section (after training the model).
- A traffic policy's cost (issue #14): the same handler, capture on, asked for the
  dataset's champion under a split policy (95/5, the model that did not answer scoring
  every race in shadow, in capture's sender thread) and by model id (no policy),
  interleaved in blocks; each call a race of its own, so the split splits. The challenger
  is a copy of the model under another run id. `--policy-only` runs just this section.
- A load test of `gallop serve`'s API over loopback: a fixed number of concurrent
  clients for --load-seconds, requests/s, p50/p99 and errors.
Figures are printed, not asserted. The model is the default stack trained on generated
races (`gallop train`), stored as a registered model is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gallop.local.stack import LocalStack, free_port
from gallop.storage import Store
from gallop.synth.races import write_races
from gallop.training.artifacts import publish_model_dir

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "shared" / "gallop" / "specs" / "races.yaml"
RUN_ID = "0123456789abcdef0001"  # run ids are hex: model ids m-{run id}
MODEL_ID = f"m-{RUN_ID}"
CHALLENGER_RUN_ID = "0123456789abcdef0002"  # the same model's files again: the challenger
CHALLENGER_ID = f"m-{CHALLENGER_RUN_ID}"
SPLIT = {"mode": "split", "challenger_share": 0.05, "shadow_share": 1.0}
RUNNERS = 12
DATA_VERSION = "v-bench"  # the model's data version: its snapshot is stored under it


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):.3f} ms / p99 {np.percentile(ms, 99):.3f} ms"


def train_model(work: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The default stack on 1,500 generated races; and a 12-runner race's feature rows."""
    import pandas as pd

    data, _ = write_races(1500, seed=3, out=work / "races.csv")
    model_dir = work / "model"
    done = subprocess.run(
        [sys.executable, "-m", "gallop.cli", "train", "--data", str(data), "--spec", str(SPEC)]
        + ["--out", str(model_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["run_id"] = RUN_ID  # as a registered run's model names its run
    manifest["data_version"] = DATA_VERSION  # and the dataset version it was trained on
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    test = pd.read_parquet(model_dir / "work" / "channels" / "test" / "features.parquet")
    sizes = test.groupby("race_id").size()
    race = test[test["race_id"] == sizes[sizes >= RUNNERS].index[0]].head(RUNNERS)
    frame = race[manifest["features"] + ["race_id"]]
    rows = json.loads(frame.to_json(orient="records"))
    return model_dir, rows


def store_snapshot(data: Path, model_dir: Path, store: Store) -> list[dict[str, Any]]:
    """The entity snapshot of the training data, stored as the features service stores it
    and named by the online pointer; and a 12-runner card for a race a day after the data
    (a race's runners, sent again under a new id)."""
    import pandas as pd

    from gallop.cli.features import canonical
    from gallop.features.build import build_features
    from gallop.features.pointer import Pointer, iso_time
    from gallop.layout import SNAPSHOT_FILE, features_prefix, online_snapshot_key
    from gallop.serving.card import card_from_rows
    from gallop.spec import load_spec

    spec = load_spec(SPEC)
    table, problems = canonical(str(data), None, spec)
    assert table is not None, problems
    built = build_features(table, spec)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["features"] == built.plan.features, "the model is not of these features"
    if manifest.get("feature_spec_hash") != built.plan.spec_hash or not manifest.get("dataset"):
        manifest |= {"feature_spec_hash": built.plan.spec_hash, "dataset": spec.name}
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
    key = features_prefix(spec.name, DATA_VERSION, built.plan.spec_hash) + SNAPSHOT_FILE
    store.put_bytes(key, built.state.to_bytes(), "application/octet-stream")
    end = built.state.meta["data_end"]
    pointer = Pointer(spec.name, built.plan.spec_hash, DATA_VERSION, key, iso_time(end), end)
    store.put_json(online_snapshot_key(spec.name, built.plan.spec_hash), pointer.to_json())
    raw = pd.read_csv(data)
    sizes = raw.groupby("race_id").size()
    race = raw[raw["race_id"] == sizes[sizes >= RUNNERS].index[-1]].head(RUNNERS).copy()
    race["race_id"] = "card-race"
    race["race_time"] = (pd.Timestamp(end, unit="us", tz="UTC") + pd.Timedelta(days=1)).isoformat()
    return card_from_rows(race, spec)


def publish_split(artifacts: Store, model_dir: Path) -> str:
    """The model again under a second run id, as the challenger, and the dataset's serving
    object (as gallop.serving.registry writes it) with the split policy; the dataset."""
    from datetime import UTC, datetime

    from gallop.layout import serving_key

    manifest = json.loads((model_dir / "manifest.json").read_text())
    copy = model_dir.parent / "challenger"
    if not copy.exists():
        import shutil

        shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("work"))
        (copy / "manifest.json").write_text(json.dumps(manifest | {"run_id": CHALLENGER_RUN_ID}))
    publish_model_dir(artifacts, CHALLENGER_RUN_ID, copy)
    dataset = str(manifest["dataset"])
    artifacts.put_json(
        serving_key(dataset),
        {
            "dataset": dataset,
            "champion": MODEL_ID,
            "challenger": CHALLENGER_ID,
            "traffic": SPLIT,
            "updated_at": datetime.now(UTC).isoformat(),
        },
    )
    return dataset


def graph_size(model_dir: Path) -> None:
    """What every prediction runs: the graph's bytes, its operators and its trees' nodes."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    split_nodes = 0
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "nodes_featureids":  # one per split (TreeEnsemble, opset 5)
                split_nodes += len(attribute.ints)
    size = (model_dir / "model.onnx").stat().st_size
    operators = sorted({n.op_type for n in graph.node})
    print(
        f"\n## graph: {size / 1e6:.2f} MB, {len(graph.node)} nodes ({', '.join(operators)}), "
        f"{split_nodes:,} tree splits"
    )


def event_for(body: dict[str, Any], key: str) -> dict[str, Any]:
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
    event["requestContext"] |= {"resourcePath": "/v1/predict", "httpMethod": "POST"}
    return event


def handler_env(stack: LocalStack) -> dict[str, str]:
    assert stack.settings is not None
    return {
        "GALLOP_AWS_ENDPOINT_URL": stack.settings.aws_endpoint_url or "",
        "GALLOP_DATA_BUCKET": stack.settings.data_bucket,
        "GALLOP_ARTIFACTS_BUCKET": stack.settings.artifacts_bucket,
        "GALLOP_API_KEY_SOURCE": "settings",
        "GALLOP_API_KEYS": stack.api_key,
        "GALLOP_CAPTURE_STREAM": stack.settings.capture_stream,
    }


COLD = """
import importlib.util, json, sys, time
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("h", sys.argv[1])
handler = importlib.util.module_from_spec(spec); spec.loader.exec_module(handler)
imported = time.perf_counter()
event = json.loads(sys.stdin.read())
reply = handler.handler(event, None)
first = time.perf_counter()
reply = handler.handler(event, None)
second = time.perf_counter()
print(json.dumps({"started": started, "imported": imported, "first": first,
                  "second": second, "status": reply["statusCode"]}))
"""


def cold_start(stack: LocalStack, event: dict[str, Any]) -> None:
    handler = str(ROOT / "functions" / "predict" / "handler.py")
    runs = []
    for _ in range(5):
        # perf_counter is the system's monotonic clock, shared by parent and child: the
        # child's marks measure from the spawn, and the process's exit is left out.
        spawned = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", COLD, handler],
            input=json.dumps(event),
            capture_output=True,
            text=True,
            env={**os.environ, **handler_env(stack)},
            cwd=ROOT,
        )
        exited = time.perf_counter()
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        marks = json.loads(done.stdout.splitlines()[-1])
        runs.append({**marks, "spawned": spawned, "exited": exited})
    best = min(runs, key=lambda r: r["first"] - r["spawned"])
    print("\n## Cold start (fresh process; best of 5)\n")
    lines = {
        "new process -> first reply, in all": best["first"] - best["spawned"],
        "interpreter start": best["started"] - best["spawned"],
        "import the handler (FastAPI, Mangum, onnxruntime, numpy, orjson)": best["imported"]
        - best["started"],
        "first request (model read from S3, session built, answered)": best["first"]
        - best["imported"],
        "second request, warm": best["second"] - best["first"],
        "(after the replies: the process's exit)": best["exited"] - best["second"],
    }
    for name, seconds in lines.items():
        print(f"- {name}: {seconds * 1000:.1f} ms")
    print(f"- status: {best['status']}")


def warm(
    stack: LocalStack,
    model_dir: Path,
    rows: list[dict[str, Any]],
    card: list[dict[str, Any]],
    calls: int,
    only: str | None = None,
    dataset: str = "races",
) -> None:
    """In a process of its own, as a Lambda container is: the local stack's threads (moto,
    uvicorn, pollers) would otherwise take the GIL in the middle of the timed calls."""
    job = {
        "model_dir": str(model_dir),
        "rows": rows,
        "card": card,
        "calls": calls,
        "dataset": dataset,
        "key": stack.api_key,
        "only": only,
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving", "--warm-child"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env={**os.environ, **handler_env(stack)},
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    print(done.stdout, end="")


def warm_child() -> None:
    job = json.loads(sys.stdin.read())
    if job["only"] is None:
        measure(Path(job["model_dir"]), job["rows"], job["calls"], job["key"])
        measure_card(job["card"], job["calls"], job["key"])
    if job["only"] in (None, "capture"):
        measure_capture(job["rows"], job["calls"], job["key"])
    if job["only"] in (None, "policy"):
        measure_policy(job["rows"], job["calls"], job["key"], job["dataset"])


def load_handler() -> Any:
    """functions/predict/handler.py, imported as Lambda imports it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "h", ROOT / "functions" / "predict" / "handler.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CAPTURE_BLOCK = 100  # calls per block; off and on blocks alternate, each going first in turn


def measure_capture(rows: list[dict[str, Any]], calls: int, key: str) -> None:
    """The 12-runner predict handler with capture off and on, interleaved in blocks in one
    process: the sender thread runs beside the timed calls (its GIL share is part of
    capture's cost), sending to the local Firehose the parent's stack serves."""
    from gallop.api.serving import capture_of, model_cache
    from gallop.monitoring.capture import Capture

    module = load_handler()
    state = module.app.state
    capture = capture_of(state)
    assert isinstance(capture, Capture), "the benchmark needs GALLOP_CAPTURE_STREAM"
    event = event_for({"model": MODEL_ID, "rows": rows}, key)
    samples: dict[bool, list[float]] = {False: [], True: []}

    def run(on: bool, count: int, keep: bool = True) -> None:
        state.capture = capture if on else None
        for _ in range(count):
            started = time.perf_counter()
            module.handler(event, None)
            if keep:
                samples[on].append(time.perf_counter() - started)

    for on in (False, True):  # warm both paths (model, sender thread, Firehose client)
        run(on, 200, keep=False)
    capture.flush(timeout=60)
    for block in range(max(1, calls // CAPTURE_BLOCK)):
        first = block % 2 == 0
        run(first, CAPTURE_BLOCK)
        run(not first, CAPTURE_BLOCK)
    delivered = capture.flush(timeout=120)
    model = model_cache(state).resolve(MODEL_ID)
    reply = json.loads(module.handler(event, None)["body"])["predictions"]
    names = list(rows[0])
    values = [[r[c] for c in names] for r in rows]
    alone = []
    held = Capture("held", lambda: None, max_queued=calls + 1)  # a sender never started:
    held._start = lambda: None  # type: ignore[method-assign]  # the queueing alone is timed
    for i in range(calls):
        started = time.perf_counter()
        held.capture(model, None, names, values, reply, f"q{i}")
        alone.append(time.perf_counter() - started)
    levels = [50, 90, 95, 99]
    off, on = (np.percentile(np.array(samples[k]) * 1000, levels) for k in (False, True))
    print(f"\n## Capture, {RUNNERS}-runner race, {len(samples[True]):,} calls each, interleaved\n")
    print(f"- handler, capture off: {percentiles(samples[False])}")
    print(f"- handler, capture on (local Firehose): {percentiles(samples[True])}")
    added = " / ".join(f"p{q} {b - a:+.3f} ms" for q, a, b in zip(levels, off, on, strict=True))
    print(f"- capture adds: {added} (budget: p99 +0.100 ms)")
    # A p99 on a busy machine is the scheduler's: the tail below it shows capture's own
    print(
        "  (off / on: "
        + ", ".join(f"p{q} {a:.3f} / {b:.3f}" for q, a, b in zip(levels, off, on, strict=True))
        + " ms)"
    )
    print(f"- the capture call alone (queue references): {percentiles(alone)}")
    totals = capture.totals
    print(
        f"- sender: {totals.captured:,} rows delivered, {totals.failures:,} failed, "
        f"{totals.dropped:,} dropped (queue full){'' if delivered else '; still sending'}"
    )


def measure_policy(rows: list[dict[str, Any]], calls: int, key: str, dataset: str) -> None:
    """The 12-runner handler, capture on, for the dataset's champion under the split policy
    and by model id (no policy), interleaved in blocks; each call a race of its own."""
    from gallop.api.serving import capture_of
    from gallop.monitoring.capture import Capture

    module = load_handler()
    state = module.app.state
    capture = capture_of(state)
    assert isinstance(capture, Capture), "the benchmark needs GALLOP_CAPTURE_STREAM"
    group = next(c for c in rows[0] if c == "race_id")

    def events(asked: dict[str, Any], n: int, tag: str) -> list[dict[str, Any]]:
        return [
            event_for(asked | {"rows": [r | {group: f"{tag}-{i}"} for r in rows]}, key)
            for i in range(n)
        ]

    per_side = max(CAPTURE_BLOCK, calls // CAPTURE_BLOCK * CAPTURE_BLOCK)
    asked = {
        False: events({"model": MODEL_ID}, per_side + 200, "plain"),
        True: events({"dataset": dataset, "model": "champion"}, per_side + 200, "split"),
    }
    samples: dict[bool, list[float]] = {False: [], True: []}
    answered_by: dict[str, int] = {}
    cursor = {False: 0, True: 0}

    def run(policy: bool, count: int, keep: bool = True) -> None:
        for _ in range(count):
            event = asked[policy][cursor[policy]]
            cursor[policy] += 1
            started = time.perf_counter()
            reply = module.handler(event, None)
            if keep:
                samples[policy].append(time.perf_counter() - started)
            if policy and keep:
                model_id = json.loads(reply["body"])["model_id"]
                answered_by[model_id] = answered_by.get(model_id, 0) + 1

    for policy in (False, True):  # warm both paths (both models, the sender, Firehose)
        run(policy, 200, keep=False)
    capture.flush(timeout=60)
    for block in range(per_side // CAPTURE_BLOCK):
        first = block % 2 == 0
        run(first, CAPTURE_BLOCK)
        run(not first, CAPTURE_BLOCK)
    delivered = capture.flush(timeout=120)
    levels = [50, 90, 99]
    plain, split = (np.percentile(np.array(samples[k]) * 1000, levels) for k in (False, True))
    share = answered_by.get(CHALLENGER_ID, 0) / max(1, len(samples[True]))
    print(
        f"\n## Traffic policy, {RUNNERS}-runner races, {len(samples[True]):,} calls each, "
        "capture on, interleaved\n"
    )
    print(f"- handler, by model id (no policy): {percentiles(samples[False])}")
    print(
        f"- handler, the dataset's champion, split 95/5 + shadow 1.0: "
        f"{percentiles(samples[True])} (challenger answered {share:.1%} of races)"
    )
    added = " / ".join(
        f"p{q} {b - a:+.3f} ms" for q, a, b in zip(levels, plain, split, strict=True)
    )
    print(f"- the policy adds: {added}")
    totals = capture.totals
    print(
        f"- sender: {totals.captured:,} rows delivered (served and shadow), "
        f"{totals.failures:,} failed, {totals.dropped:,} dropped, "
        f"{totals.shadow_dropped:,} shadow rows dropped, {totals.shadow_failures:,} not scored"
        f"{'' if delivered else '; still sending'}"
    )
    # The answering path alone: capture off, so no sender shares the GIL (and no shadow,
    # which rides on capture): what the split itself costs the model that answers.
    state.capture = None
    samples.update({False: [], True: []})
    cursor.update({False: 0, True: 0})
    for block in range(per_side // CAPTURE_BLOCK):
        first = block % 2 == 0
        run(first, CAPTURE_BLOCK)
        run(not first, CAPTURE_BLOCK)
    print(f"- capture off: by model id {percentiles(samples[False])}")
    print(f"- capture off: the champion, split 95/5 {percentiles(samples[True])}")
    plain, split = (np.percentile(np.array(samples[k]) * 1000, levels) for k in (False, True))
    added = " / ".join(
        f"p{q} {b - a:+.3f} ms" for q, a, b in zip(levels, plain, split, strict=True)
    )
    print(f"- capture off, the split adds: {added}")


def measure_card(card: list[dict[str, Any]], calls: int, key: str) -> None:
    """A race card through the handler, and its completion into feature rows alone."""
    import importlib.util

    from gallop.api.serving import _completed, model_cache

    spec = importlib.util.spec_from_file_location(
        "h", ROOT / "functions" / "predict" / "handler.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.state.capture = None  # the figures of the section below, capture off
    event = event_for({"model": MODEL_ID, "rows": card}, key)
    first = module.handler(event, None)
    assert first["statusCode"] == 200, first["body"]
    as_of = json.loads(first["body"])["features_as_of"]
    state = module.app.state
    model = model_cache(state).resolve(MODEL_ID)
    columns = list(card[0])
    values = [[row[c] for c in columns] for row in card]

    def timed(call: Any) -> list[float]:
        for _ in range(100):
            call()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return samples

    handler = timed(lambda: module.handler(event, None))
    completion = timed(lambda: _completed(state, model, columns, values, "online"))
    print(f"\n## Race card, {len(card)} runners ({as_of['snapshot']} snapshot), {calls:,} calls\n")
    print(f"- handler (API Gateway event -> reply), card: {percentiles(handler)}")
    print(
        f"  - completion alone (pointer, card checks, features from the snapshot): "
        f"{percentiles(completion)}"
    )


def measure(model_dir: Path, rows: list[dict[str, Any]], calls: int, key: str) -> None:
    import importlib.util

    import orjson

    from gallop.models.lightgbm import LightGBMBase
    from gallop.serving.model import LoadedModel
    from gallop.serving.predict import feature_matrix, parse, predict_body

    spec = importlib.util.spec_from_file_location(
        "h", ROOT / "functions" / "predict" / "handler.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.state.capture = None  # capture's cost is measured on its own, interleaved
    body = {"model": MODEL_ID, "rows": rows}
    event = event_for(body, key)
    assert module.handler(event, None)["statusCode"] == 200

    def timed(call: Any) -> list[float]:
        for _ in range(200):
            call()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return samples

    model = LoadedModel.from_dir(model_dir)
    raw = json.dumps(body).encode()
    features, groups = feature_matrix(model, *parse(model, orjson.loads(raw)))
    # gallop train leaves each base job's model in work/: the bags of fold boosters
    boosters = [
        booster
        for b in model.manifest["base_models"]
        if b["kind"] == "lightgbm"
        for booster in LightGBMBase.load(
            next(model_dir.glob(f"work/base-*-{b['model']}/model"))
        ).boosters
    ]

    def naive() -> None:  # every booster's margin, then a mix (the weights do not matter here)
        margins = np.column_stack([b.predict(features, raw_score=True) for b in boosters])
        score = margins.mean(axis=1)
        np.exp(score - score.max()) / np.exp(score - score.max()).sum()

    handler_samples = timed(lambda: module.handler(event, None))
    names = list(rows[0])
    columnar = event_for(
        {"model": MODEL_ID, "columns": names, "data": [[r[c] for c in names] for r in rows]}, key
    )
    rows_out = {
        "handler (API Gateway event -> reply), rows as objects": handler_samples,
        "handler, rows as columns + data": timed(lambda: module.handler(columnar, None)),
        "  parse + validate (orjson, one pass)": timed(
            lambda: feature_matrix(model, *parse(model, orjson.loads(raw)))
        ),
        "  ONNX session": timed(lambda: model.run(features)),
        "  predict_body + orjson.dumps": timed(lambda: orjson.dumps(predict_body(model, body))),
        "bare InferenceSession.run": timed(lambda: model.session.run(None, {"features": features})),
        f"naive Python ({len(boosters)} LightGBM boosters + numpy)": timed(naive),
    }
    shape = f"{RUNNERS}-runner race x {len(model.features)} features"
    print(f"\n## Warm latency, {shape}, {calls:,} calls\n")
    for name, samples in rows_out.items():
        print(f"- {name}: {percentiles(samples)}")
    bare = np.percentile(rows_out["bare InferenceSession.run"], 99)
    print(f"- handler p99 / bare session p99: {np.percentile(handler_samples, 99) / bare:.1f}x")


def load(stack: LocalStack, rows: list[dict[str, Any]], seconds: float, clients: int = 4) -> None:
    import httpx

    body = json.dumps({"model": MODEL_ID, "rows": rows}).encode()
    headers = {"x-api-key": stack.api_key, "content-type": "application/json"}
    latencies: list[float] = []
    errors: list[int] = []
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=stack.api_url or "", timeout=30) as http:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                reply = http.post("/v1/predict", content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if reply.status_code != 200:
                    errors.append(reply.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"\n## Load test: gallop serve over loopback, {clients} clients, {seconds:.0f} s\n")
    print(f"- {len(latencies):,} requests, {len(latencies) / seconds:,.0f} requests/s")
    print(f"- latency {percentiles(latencies)}")
    print(f"- errors: {len(errors)} ({sorted(set(errors))})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument(
        "--capture-only",
        action="store_true",
        help="only capture's cost: the handler with capture off and on, interleaved",
    )
    parser.add_argument(
        "--policy-only",
        action="store_true",
        help="only a traffic policy's cost: the champion under a 95/5 split with shadow 1.0 "
        "and by model id, interleaved",
    )
    parser.add_argument("--warm-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child:
        return warm_child()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("training the default stack on 1,500 generated races ...", flush=True)
        model_dir, rows = train_model(work)
        graph_size(model_dir)
        with LocalStack(work / "state", quiet=True) as stack:
            stack.serve_api(free_port())
            assert stack.settings is not None
            card = store_snapshot(
                work / "races.csv", model_dir, Store.from_settings(stack.settings)
            )
            artifacts = Store.artifacts_from_settings(stack.settings)
            publish_model_dir(artifacts, RUN_ID, model_dir)
            dataset = publish_split(artifacts, model_dir)
            only = "capture" if args.capture_only else "policy" if args.policy_only else None
            warm(stack, model_dir, rows, card, args.calls, only, dataset)
            if only:
                return
            cold_start(stack, event_for({"model": MODEL_ID, "rows": rows}, stack.api_key))
            load(stack, rows, args.load_seconds)


if __name__ == "__main__":
    main()
