"""Appending one day of races to a 1,000,000-row history: the features of the appended
version built from its parent's snapshot, against a full rebuild of the same data.

    .venv/bin/python benchmarks/append_features.py [--races 95000]

Everything goes through the features service (`build_for_version`) as the features
function runs it: objects in S3 (a moto server on 127.0.0.1), metadata in SQLite. Each
build runs in a fresh process, so its wall time includes every read and write (parent
manifest and snapshot, append.parquet, the new part, the snapshot, the manifest) and its
peak memory (max RSS) is its own. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"
BUCKET = "gallop-bench-data"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def peak_mb() -> float:
    """This process's peak resident memory since it started (VmHWM: unlike ru_maxrss, it
    does not carry over the parent's peak through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def build(endpoint: str, database: Path, dataset: str, version_id: str) -> dict[str, Any]:
    """One features build, timed from the request to the READY row."""
    from gallop.features.service import FeaturesRequest, build_for_version
    from gallop.manifests import read_feature_manifest
    from gallop.metadata.db import engine_for
    from gallop.storage import Store

    engine = engine_for(f"sqlite:///{database}")
    store = Store(BUCKET, s3_client(endpoint))
    loaded_mb = peak_mb()
    started = time.perf_counter()
    made = build_for_version(FeaturesRequest(dataset, version_id), store, engine)
    seconds = time.perf_counter() - started
    assert made.status == "READY", made.reason
    assert made.manifest_key and made.state_key
    manifest = read_feature_manifest(json.loads(store.get_bytes(made.manifest_key)))
    return {
        "seconds": seconds,
        "peak_mb": peak_mb(),
        "loaded_mb": loaded_mb,
        "rows": manifest["rows"],
        "computed": manifest["parts"][-1]["rows"],
        "parts": len(manifest["parts"]),
        "build": manifest["build"],
        "snapshot_mb": store.head(made.state_key)[0] / 1e6,
    }


def child(endpoint: str, database: Path, dataset: str, version_id: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--endpoint",
        endpoint,
        "--database",
        str(database),
        "--dataset",
        dataset,
        "--version",
        version_id,
    ]
    env = {**os.environ, **CREDENTIALS}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def store_version(
    store: Any,
    engine: Any,
    dataset: Any,
    whole: Any,
    appended: Any = None,
    parent: str | None = None,
) -> str:
    """A VALID version as ingestion stores it (its whole data, an append's own rows)."""
    from gallop.ingest.canonical import content_hash, to_parquet, version_id_for
    from gallop.layout import DATA_FILE, RawKey, appended_key, curated_prefix
    from gallop.metadata import repo

    spec = repo.spec_of(dataset)
    version_id = version_id_for(content_hash(whole, spec), True)
    data_key = curated_prefix(dataset.name, version_id) + DATA_FILE
    store.put_bytes(data_key, to_parquet(whole), "application/vnd.apache.parquet")
    if appended is not None:
        store.put_bytes(
            appended_key(dataset.name, version_id),
            to_parquet(appended),
            "application/vnd.apache.parquet",
        )
    repo.record_version(
        engine,
        dataset,
        uuid.uuid4().hex,
        "bench",
        version_id=version_id,
        status="VALID",
        content_hash=version_id,
        row_count=len(whole),
        source_key=RawKey.for_upload(dataset.name, "bench", "races.csv").key,
        data_key=data_key,
        report={},
        parent_version_id=parent,
        rows_added=None if appended is None else len(appended),
        rows_replaced=None if appended is None else 0,
    )
    return version_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=95_000)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--endpoint")
    parser.add_argument("--database", type=Path)
    parser.add_argument("--dataset")
    parser.add_argument("--version")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build(args.endpoint, args.database, args.dataset, args.version)))
        return

    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server's request log
    import pandas as pd
    from moto.server import ThreadedMotoServer

    from gallop.ingest.validate import validate
    from gallop.metadata import repo
    from gallop.metadata.db import engine_for, migrate
    from gallop.spec import load_spec
    from gallop.storage import Store
    from gallop.synth.races import generate_races

    spec = load_spec(SPEC)
    started = time.perf_counter()
    runners, _ = generate_races(args.races, seed=1)
    # The last racing day: races of one day share off times with each other, never with
    # the days before (a cut by race count could split a time slot across the append)
    dates = pd.to_datetime(runners["race_time"]).dt.date
    day = (dates == dates.max()).to_numpy()

    def canonical(rows: Any) -> Any:
        checked = validate(rows.astype(str), spec)
        assert checked.canonical is not None, [p.message for p in checked.problems]
        return checked.canonical

    whole, stored, appended = canonical(runners), canonical(runners[~day]), canonical(runners[day])
    print(
        f"prepared {len(whole):,} runner rows ({args.races:,} races), the last day's "
        f"{len(appended):,} runners appended, in {time.perf_counter() - started:.0f} s"
    )

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        store = Store(BUCKET, s3_client(endpoint))
        store.s3.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            database = Path(tmp) / "meta.db"
            engine = engine_for(f"sqlite:///{database}")
            migrate(engine)
            dataset, _ = repo.register_dataset(engine, spec)
            parent = store_version(store, engine, dataset, stored)
            results = {"parent": child(endpoint, database, spec.name, parent)}
            version = store_version(store, engine, dataset, whole, appended, parent)
            results["append"] = child(endpoint, database, spec.name, version)
            other_spec = spec.model_copy(update={"name": "races-whole"})
            other, _ = repo.register_dataset(engine, other_spec)
            once = store_version(store, engine, other, whole)
            results["full"] = child(endpoint, database, other_spec.name, once)
    finally:
        server.stop()

    report(results)


def report(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'':<44}{'wall s':>8}{'peak MB':>9}{'rows':>11}{'computed':>10}")
    for kind, label in (
        ("full", "full rebuild of the whole (one upload)"),
        ("append", "the appended day, from the parent snapshot"),
    ):
        r = results[kind]
        print(
            f"{label:<44}{r['seconds']:>8.2f}{r['peak_mb']:>9,.0f}{r['rows']:>11,}"
            f"{r['computed']:>10,}"
        )
    append, full = results["append"], results["full"]
    print(
        f"(each in a fresh process; peak MB includes ~{append['loaded_mb']:,.0f} MB for Python, "
        f"pandas and boto3 before the build)"
    )
    print(f"append build: {append['build']}; parts: {append['parts']}")
    print(f"snapshot (state.npz): {append['snapshot_mb']:.1f} MB")
    print(f"incremental / full: {100 * append['seconds'] / full['seconds']:.1f} %")


if __name__ == "__main__":
    main()
