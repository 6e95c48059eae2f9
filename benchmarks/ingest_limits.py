"""What the red team's uploads cost now: each is ingested through the ingest Lambda handler
(an S3 event in an SQS record) in a fresh process, against a moto server and SQLite.

    .venv/bin/python -m benchmarks.ingest_limits [--only wide-48mb ...]

For each file: the outcome (status and problem code), seconds, the peak RSS growth of the
process that ingests it (its high-water mark reset after imports and clients are built),
and the size of the report the API would return. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "shared" / "gallop" / "specs" / "races.yaml"
BUCKET = "gallop-data"


def wide_csv(good: bytes, extra_columns: int, rows: int) -> bytes:
    """The race file's header and first rows, each with `extra_columns` more columns."""
    lines = good.split(b"\n")
    names = b"".join(b",c%d" % i for i in range(extra_columns))
    cells = b",1" * extra_columns
    return b"\n".join([lines[0] + names] + [line + cells for line in lines[1 : rows + 1]]) + b"\n"


def long_cell(good: bytes, chars: int = 131_073) -> bytes:
    lines = good.split(b"\n")
    fields = lines[4].split(b",")
    fields[-1] = b"x" * chars
    lines[4] = b",".join(fields)
    return b"\n".join(lines)


def deep_jsonl(good: bytes, depth: int = 100_000) -> bytes:
    return b'{"race_id": ' + b"[" * depth + b"]" * depth + b"}\n"


def gzip_bomb(good: bytes, members: int = 32) -> bytes:
    """2 GiB of zeros (twice the default limit) in about 2 MB: gzip members of 64 MiB each,
    one after the other (a valid gzip file, as `cat a.gz b.gz` makes)."""
    return gzip.compress(bytes(64 << 20), 9, mtime=0) * members


def as_jsonl(good: bytes) -> bytes:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(good), dtype=str, keep_default_na=False)
    return frame.to_json(orient="records", lines=True).encode()


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    make: Callable[[bytes], bytes]


CASES = [
    Case("wide-48mb", "data.csv", lambda good: wide_csv(good, 1_000_000, 20)),
    Case("wide-9.9mb", "data.csv", lambda good: wide_csv(good, 1_000_000, 1)),
    Case("cell-131073", "data.csv", long_cell),
    Case("cr-only", "data.csv", lambda good: good.replace(b"\n", b"\r")),
    Case("jsonl-100000-deep", "data.jsonl", deep_jsonl),
    Case("gzip-bomb-2gib", "data.csv.gz", gzip_bomb),
    Case("normal-100k-rows", "data.csv", lambda good: good),
    Case("normal-100k-rows-gz", "data.csv.gz", lambda good: gzip.compress(good, 6)),
    Case("normal-100k-rows-jsonl", "data.jsonl", as_jsonl),
]


def race_file(races: int = 9500) -> bytes:
    """About 100,000 runners (the race files of benchmarks/ingest_100k.py)."""
    from gallop.synth.races import write_races

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = write_races(races, seed=2024, out=Path(tmp) / "races.csv")
        return path.read_bytes()


class Bench:
    """A moto server, a migrated SQLite database and the races dataset: what the ingest
    function talks to. Files are put under raw/; each is ingested in a fresh process."""

    def __init__(self, workdir: Path) -> None:
        from gallop.metadata import repo
        from gallop.metadata.db import engine_for, migrate
        from gallop.spec import load_spec

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "GALLOP_AWS_ENDPOINT_URL": self.endpoint,
            "GALLOP_DATA_BUCKET": BUCKET,
            "DATABASE_URL": f"sqlite:///{workdir / 'gallop.db'}",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "CRITICAL",
        }
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        self.s3.create_bucket(Bucket=BUCKET)
        sqs = boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        self.env["GALLOP_FEATURES_QUEUE_URL"] = sqs.create_queue(QueueName="features")["QueueUrl"]
        self.env["GALLOP_MONITOR_QUEUE_URL"] = sqs.create_queue(QueueName="monitor")["QueueUrl"]
        engine = engine_for(self.env["DATABASE_URL"])
        migrate(engine)
        self.dataset = load_spec(SPEC).name
        repo.register_dataset(engine, load_spec(SPEC))

    def ingest(self, upload_id: str, filename: str, data: bytes) -> dict[str, Any]:
        key = f"raw/{self.dataset}/{upload_id}/{filename}"
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        reply = subprocess.run(
            [sys.executable, "-m", "benchmarks.ingest_limits", "--child", key],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if reply.returncode != 0:
            raise RuntimeError(f"{upload_id}: the ingest process failed:\n{reply.stderr[-3000:]}")
        return {**json.loads(reply.stdout.splitlines()[-1]), "bytes": len(data)}

    def stop(self) -> None:
        self.moto.stop()


@contextmanager
def bench() -> Iterator[Bench]:
    with tempfile.TemporaryDirectory() as tmp:
        running = Bench(Path(tmp))
        try:
            yield running
        finally:
            running.stop()


def _high_water_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def child(key: str) -> None:
    """Run in the ingesting process: one S3 event through the ingest handler."""
    from gallop.ingest.events import object_created_body
    from gallop.layout import RawKey
    from gallop.local.lambda_runtime import LocalContext, load_handler, sqs_record
    from gallop.metadata import repo
    from gallop.metadata.db import engine_for
    from gallop.settings import get_settings
    from gallop.storage import Store

    settings = get_settings()
    handler = load_handler("ingest")
    engine = engine_for(settings.sqlalchemy_url)
    store = Store.from_settings(settings)
    size, _ = store.head(key)  # clients built, connections open: not counted below
    raw = RawKey.parse(key)
    dataset = repo.get_dataset(engine, raw.dataset)
    message = {
        "MessageId": "bench",
        "ReceiptHandle": "bench",
        "Body": object_created_body(settings.data_bucket, key, size),
        "Attributes": {"ApproximateReceiveCount": "1"},
        "MD5OfBody": "",
    }
    event = {"Records": [sqs_record(message, "arn:aws:sqs:us-east-1:000000000000:ingest", "")]}
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts from here
    before_kb = _high_water_kb()
    started = time.perf_counter()
    reply = handler(event, LocalContext("ingest"))
    seconds = time.perf_counter() - started
    growth_kb = _high_water_kb() - before_kb
    upload = repo.latest_upload_of_key(engine, key)
    assert upload is not None, f"no upload recorded for {key}"
    version = repo.find_version(engine, dataset, upload.version_id) if upload.version_id else None
    report = version.report if version is not None else {}
    print(
        json.dumps(
            {
                "status": upload.status,
                "codes": [e["code"] for e in report.get("errors", [])],
                "seconds": round(seconds, 2),
                "peak_rss_growth_mb": round(growth_kb / 1024, 1),
                "report_bytes": len(json.dumps(report)),
                "retried": bool(reply.get("batchItemFailures")),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="case names to run")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    good = race_file()
    print(f"{'case':<22}{'MB':>8}  {'outcome':<36}{'s':>7}{'peak RSS +MB':>14}{'report':>9}")
    with bench() as running:
        for case in CASES:
            if args.only and case.name not in args.only:
                continue
            data = case.make(good)
            result = running.ingest(case.name, case.filename, data)
            outcome = f"{result['status']} {','.join(result['codes'][:2])}"
            print(
                f"{case.name:<22}{len(data) / 1e6:>8.1f}  {outcome:<36}{result['seconds']:>7.2f}"
                f"{result['peak_rss_growth_mb']:>14,.0f}{result['report_bytes']:>8,} B"
            )


if __name__ == "__main__":
    main()
