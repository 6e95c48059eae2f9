"""How long ingesting ~100,000 generated runners takes, end to end and by stage.

    .venv/bin/python benchmarks/ingest_100k.py [--races 9500]

End to end is what `gallop ingest` does against the local stack: presigned POST to the
moto server, S3 -> SQS notification, poller, ingest handler, metadata row. The split
runs the same library steps in memory. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from gallop.client import GallopClient
from gallop.ingest.canonical import content_hash, to_parquet
from gallop.ingest.readers import read_table
from gallop.ingest.validate import validate
from gallop.local.stack import LocalStack, free_port
from gallop.spec import load_spec
from gallop.synth.races import write_races

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=9500, help="about 10.5 runners a race")
    args = parser.parse_args()
    spec = load_spec(SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data, _ = write_races(args.races, seed=2024, out=Path(tmp) / "races.csv")
        generate_s = time.perf_counter() - started
        raw = data.read_bytes()

        timings: dict[str, float] = {}
        t = time.perf_counter()
        frame = read_table(raw, "csv")
        timings["read CSV"] = time.perf_counter() - t
        t = time.perf_counter()
        result = validate(frame, spec)
        timings["validate + canonicalise"] = time.perf_counter() - t
        assert result.canonical is not None
        t = time.perf_counter()
        content_hash(result.canonical, spec)
        timings["content hash"] = time.perf_counter() - t
        t = time.perf_counter()
        parquet = to_parquet(result.canonical)
        timings["write Parquet"] = time.perf_counter() - t

        with LocalStack(Path(tmp) / "state", quiet=True) as stack:
            client = GallopClient(stack.serve_api(free_port()), stack.api_key)
            client.register_dataset(spec)
            t = time.perf_counter()
            upload_id = client.upload_file(spec.name, data)
            uploaded = time.perf_counter() - t
            status = client.wait_for_upload(spec.name, upload_id)
            end_to_end = time.perf_counter() - t
            version = client.version(spec.name, status["version_id"])
            client.close()

    rows = version["row_count"]
    print(f"generated {args.races:,} races / {rows:,} runners in {generate_s:.1f} s")
    print(f"file: {len(raw) / 1e6:.1f} MB CSV -> {len(parquet) / 1e6:.1f} MB Parquet (zstd)")
    print(
        f"end to end (upload -> {status['status']} version): {end_to_end:.2f} s "
        f"({rows / end_to_end:,.0f} rows/s), of which presigned POST {uploaded:.2f} s"
    )
    for stage, seconds in timings.items():
        print(f"  {stage:<26}{seconds:6.2f} s")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
