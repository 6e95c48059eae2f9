"""A day's results appended to a ~1,000,000-row history, end to end on the local stack,
beside a full rebuild of the same data.

    .venv/bin/python -m benchmarks.append_day [--races 95000]

Through the local stack (moto server, S3 -> SQS -> ingest -> features pollers, the API):
  1. a small first version, a small model trained on it and promoted champion (the model
     race cards are scored by; its feature spec is the dataset's);
  2. the history as one upload: upload -> VALID -> features READY (the full rebuild);
  3. the next day's results as an append: upload -> VALID -> features READY -> a race card
     for the day after answered from the appended version's snapshot (`features_as_of`),
     each step timed from the start of the upload.
The alias TTL is set to 0 so that "visible to /v1/predict" is the snapshot's switch, not
the cache's wait (a deployed container picks a new snapshot up within its TTL). Peak
memory is the max RSS of this process, which runs every poller and handler in it.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from gallop.client import GallopClient
from gallop.layout import APPEND
from gallop.local.stack import LocalStack, free_port
from gallop.serving.card import card_from_rows
from gallop.spec import load_spec
from gallop.synth.races import generate_races

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"
SMALL = {"num_boost_round": 10, "folds": 2}


def _parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=95000, help="about 10.5 runners a race")
    args = parser.parse_args()
    spec = load_spec(SPEC)

    started = time.perf_counter()
    runners, _ = generate_races(args.races, seed=2024)
    runners["race_time"] = pd.to_datetime(runners["race_time"], utc=True)
    day = runners["race_time"].dt.strftime("%Y-%m-%d")
    days = sorted(day.unique())
    history = runners[day < days[-2]]
    appended = runners[day == days[-2]]
    upcoming = runners[day == days[-1]]
    card_race = upcoming[upcoming["race_id"] == upcoming["race_id"].iloc[0]]
    first = history[history["race_time"] <= history["race_time"].quantile(0.02)]
    print(
        f"generated {len(runners):,} runners in {time.perf_counter() - started:.0f} s: history "
        f"{len(history):,} rows, the appended day {len(appended):,} rows in "
        f"{appended['race_id'].nunique()} races"
    )

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"alias_ttl_seconds": "0", "max_upload_bytes": str(2**30)}
        with LocalStack(Path(tmp), quiet=True, settings_overrides=overrides) as stack:
            client = GallopClient(stack.serve_api(free_port()), stack.api_key, timeout=600)
            client.register_dataset(spec)

            small = _through(client, spec.name, _parquet(first), "parquet")
            run = client.start_training_run(
                spec.name, version=small["version_id"], bases=["lambdarank"], hyperparameters=SMALL
            )
            model = client.wait_for_training_run(run["run_id"], timeout=1800)["model"]
            client.promote(model["model_id"])
            print(f"model {model['model_id']} trained on {len(first):,} rows, champion")

            full = _through(client, spec.name, _parquet(history), "parquet")
            print(
                f"full build of the history ({len(history):,} rows): VALID "
                f"{full['valid_s']:.2f} s, features READY {full['ready_s']:.2f} s after upload"
            )

            card = card_from_rows(card_race.astype({"race_time": str}), spec)
            day_csv = _csv(appended.astype({"race_time": str}))
            t = time.perf_counter()
            upload_id = client.upload_bytes(spec.name, day_csv, "csv", mode=APPEND)
            uploaded = time.perf_counter() - t
            status = client.wait_for_upload(spec.name, upload_id, timeout=600)
            valid = time.perf_counter() - t
            built = client.wait_for_features(spec.name, status["version_id"], timeout=600)
            ready = time.perf_counter() - t
            while True:
                reply = client.predict("champion", card)
                if reply["features_as_of"]["version_id"] == status["version_id"]:
                    break
            visible = time.perf_counter() - t
            version = client.version(spec.name, status["version_id"])
            client.close()

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_s = full["ready_s"]
    print(
        f"append of one day ({len(appended):,} rows, parent {version['parent_version_id']}): "
        f"{status['status']}, features {built['status']} "
        f"({(built.get('build') or {}).get('kind')})"
    )
    print(f"  presigned POST      {uploaded:6.2f} s")
    print(f"  upload -> VALID     {valid:6.2f} s")
    print(f"  -> features READY   {ready:6.2f} s")
    print(f"  -> card answered from it (features_as_of) {visible:6.2f} s  (budget 3 s)")
    print(f"  = {100 * visible / full_s:.1f} % of the full build's {full_s:.2f} s (budget 15 %)")
    print(f"peak RSS of this process (every poller and handler): {peak_mb:,.0f} MB")


def _through(client: GallopClient, dataset: str, data: bytes, file_format: str) -> dict:
    """Upload as a whole version; seconds from the upload to VALID and to features READY."""
    t = time.perf_counter()
    upload_id = client.upload_bytes(dataset, data, file_format)
    status = client.wait_for_upload(dataset, upload_id, timeout=1800)
    if status["status"] != "VALID":
        raise SystemExit(f"the upload was {status['status']}: {status}")
    valid_s = time.perf_counter() - t
    built = client.wait_for_features(dataset, status["version_id"], timeout=1800)
    if built["status"] != "READY":
        raise SystemExit(f"features {built['status']}: {built.get('reason')}")
    return {
        "version_id": status["version_id"],
        "valid_s": valid_s,
        "ready_s": time.perf_counter() - t,
    }


if __name__ == "__main__":
    main()
