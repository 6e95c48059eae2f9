"""The monitor over 100,000 captured rows (budget: <= 10 s and <= 1 GB on 2 cores).

    .venv/bin/python -m benchmarks.monitor [--rows 100000]

Set-up (not timed): a local stack; generated races ingested, their features built, a small
model trained through the API and promoted; then feature rows of the races (with their race
and horse ids, so that live quality finds their results) sent to /v1/predict, 1,000 rows a
request, whole races, and captured through the local Firehose into S3.

Timed: one monitor run (`gallop monitor`'s: drift checked whatever the count) in a fresh
process against the same local stack, so that its peak memory is its own: it reads every
captured object, marks them read, scores them against the newest version's results, builds
the model's drift reference (its first check) and checks drift, stores both, writes the
page and prints the EMF line. A second run shows the cost with the reference stored.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"
SMALL = {"num_boost_round": 30, "folds": 2}


def run_once() -> None:
    """In the fresh process: one forced monitor run, its time and peak memory."""
    started = time.perf_counter()
    from gallop.monitoring.run import Monitor
    from gallop.settings import get_settings

    with open(os.devnull, "w") as quiet:
        checks = Monitor(get_settings(), metrics_out=quiet).run(force=True)
    seconds = time.perf_counter() - started
    peak = next(
        int(line.split()[1]) / 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    check = checks[0]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak,
                "rows": check.rows,
                "new_rows": check.new_rows,
                "live_days": len(check.live),
                "scored_rows": sum(d["rows"] for d in check.live),
                "drift_rows": len(check.drift or []),
                "problems": check.problems,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        run_once()
        return

    from gallop.client import GallopClient
    from gallop.features.build import build_features
    from gallop.local.stack import LocalStack, free_port
    from gallop.monitoring.capture import read_captured
    from gallop.spec import load_spec
    from gallop.storage import Store
    from gallop.synth.races import generate_races

    spec = load_spec(SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "state", quiet=True).start()
        try:
            stack.serve_api(free_port())
            assert stack.api_url is not None and stack.settings is not None
            client = GallopClient(stack.api_url, stack.api_key, timeout=300)
            runners, _ = generate_races(int(args.rows / 9.5) + 200, seed=7)
            print(f"set-up: {len(runners):,} runners in {runners['race_id'].nunique():,} races")
            client.register_dataset(spec)
            upload = client.upload_bytes(spec.name, runners.to_csv(index=False).encode(), "csv")
            version = client.wait_for_upload(spec.name, upload, timeout=600)["version_id"]
            client.wait_for_features(spec.name, version, timeout=600)
            run = client.start_training_run(spec.name, bases=["lambdarank"], hyperparameters=SMALL)
            model = client.wait_for_training_run(run["run_id"], timeout=1800)["model"]
            client.promote(model["model_id"])
            features = client.model(model["model_id"])["features"]

            built = build_features(runners, spec)
            frame = built.frame
            sent = 0
            batch: list[dict[str, Any]] = []
            for _, race in frame.groupby("race_id", sort=False):
                if sent + len(batch) + len(race) > args.rows:
                    break
                if len(batch) + len(race) > 1000:
                    client.predict("champion", rows=batch)
                    sent, batch = sent + len(batch), []
                batch += _rows(race, features, built.manifest["categorical"])
            if batch:
                client.predict("champion", rows=batch)
                sent += len(batch)
            data = Store.from_settings(stack.settings)
            deadline = time.monotonic() + 300
            while len(read_captured(data, spec.name, model["model_id"])) < sent:
                assert time.monotonic() < deadline, "the capture did not arrive"
                time.sleep(1)
            print(f"set-up: {sent:,} rows predicted and captured")

            env = {
                **os.environ,
                "GALLOP_AWS_ENDPOINT_URL": stack.settings.aws_endpoint_url or "",
                "DATABASE_URL": stack.settings.sqlalchemy_url,
                "GALLOP_STATE_DIR": str(stack.state_dir),
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            for label in ("first check (builds the reference)", "second check"):
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.monitor", "--once"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{label}: {figures['seconds']:.2f} s, peak {figures['peak_mb']:.0f} MB "
                    f"(budget 10 s, 1,024 MB); {figures['rows']:,} captured rows, "
                    f"{figures['scored_rows']:,} scored against results, "
                    f"{figures['drift_rows']} drift rows; problems: {figures['problems']}"
                )
            client.close()
        finally:
            stack.stop()


def _rows(race: Any, features: list[str], categorical: dict[str, list[str]]) -> list[dict]:
    rows = []
    for record in race.to_dict("records"):
        row: dict[str, Any] = {
            "race_id": str(record["race_id"]),
            "horse_id": str(record["horse_id"]),
        }
        for name in features:
            value = record[name]
            if name in categorical:
                row[name] = None if np.isnan(value) else categorical[name][int(value)]
            else:
                row[name] = None if np.isnan(value) else float(value)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
