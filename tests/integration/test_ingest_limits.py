"""The red team's uploads cost what one upload may cost: the 48 MB CSV of a million
columns ingested through the ingest handler in a process of its own, and through
`gallop serve` (the local stack the red team brought down), each process's memory measured."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ingest_limits import Bench, bench, wide_csv
from gallop.client import GallopClient
from gallop.local.stack import free_port, running_endpoints
from gallop.spec import DatasetSpec
from tests.integration.test_crash_durability import GALLOP, _healthy

# What ingesting a file the limits refuse may add to the ingesting process: the file itself
# (48 MB) and little more. Before the limits, the 48 MB file grew it to 23 GB.
REFUSED_PEAK_MB = 120
# What the same file may add to `gallop serve`, which also takes the upload in through its
# local S3 (the form's body parsed, the object stored) before ingesting it: a few copies
# of the file, where before the limits the stack grew to 23 GB and the kernel killed it.
REFUSED_STACK_PEAK_MB = 300


@pytest.fixture(scope="module")
def running() -> Iterator[Bench]:
    with bench() as harness:
        yield harness


@pytest.fixture(scope="module")
def wide(races_csv: Path) -> bytes:
    """The race file's columns and a million more, 20 rows: 47.9 MB."""
    data = wide_csv(races_csv.read_bytes(), 1_000_000, 20)
    assert round(len(data) / 1e6, 1) == 47.9
    return data


def test_a_48_mb_csv_of_a_million_columns_is_rejected_in_bounded_memory(
    running: Bench, wide: bytes
) -> None:
    # WHEN the 48 MB file is ingested
    result = running.ingest("wide", "data.csv", wide)
    # THEN it is REJECTED for its width, within a bounded memory, and its report is small
    # (a 9.9 MB file of a million columns had a 10.9 MB one, beyond what Lambda may return).
    # How long it takes is a budget of benchmarks/ingest_limits.py, not asserted here.
    assert (result["status"], result["codes"]) == ("REJECTED", ["too_many_columns"])
    assert result["peak_rss_growth_mb"] < REFUSED_PEAK_MB, result
    assert result["report_bytes"] < 2_000


def _high_water_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def test_the_48_mb_csv_posted_to_gallop_serve_is_rejected_and_the_stack_lives_on(
    tmp_path: Path, wide: bytes, races_spec: DatasetSpec
) -> None:
    # GIVEN gallop serve with its default limits, started and idle
    server = subprocess.Popen(
        [str(GALLOP), "serve", "--state-dir", str(tmp_path), "--port", str(free_port())],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = None
    try:
        deadline = time.monotonic() + 60
        while (endpoints := running_endpoints(tmp_path)) is None or not _healthy(endpoints):
            assert server.poll() is None and time.monotonic() < deadline, "no gallop serve"
            time.sleep(0.1)
        client = GallopClient(endpoints["api_url"], endpoints["api_key"])
        client.register_dataset(races_spec)
        # its high-water mark restarted from here: what the upload adds is what is measured
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")
        before_mb = _high_water_mb(server.pid)

        # WHEN the 48 MB file is uploaded through the presigned POST, as a client would
        upload_id = client.upload_bytes(races_spec.name, wide, "csv")
        status = client.wait_for_upload(races_spec.name, upload_id, timeout=300)

        # THEN it is REJECTED for its width, with a small report
        version = client.version(races_spec.name, status["version_id"])
        assert status["status"] == "REJECTED"
        assert [e["code"] for e in version["report"]["errors"]] == ["too_many_columns"]
        # AND the stack grew by a few copies of the file at most, and still answers
        growth_mb = _high_water_mb(server.pid) - before_mb
        assert growth_mb < REFUSED_STACK_PEAK_MB, f"gallop serve grew by {growth_mb:.0f} MB"
        assert server.poll() is None and client.health()["status"] == "ok"
        print(f"gallop serve's peak grew by {growth_mb:.0f} MB for the 48 MB file")
    finally:
        if client is not None:
            client.close()
        server.terminate()
        server.wait(timeout=60)
