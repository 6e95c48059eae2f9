"""The red team's uploads, each ingested through the ingest handler in a process of its
own, whose memory is measured: what one upload may cost is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ingest_limits import Bench, bench, wide_csv

# What ingesting a file the limits refuse may add to a process: the file itself (48 MB)
# and little more. Before the limits, the 48 MB file grew it to 23 GB.
REFUSED_PEAK_MB = 120


@pytest.fixture(scope="module")
def running() -> Iterator[Bench]:
    with bench() as harness:
        yield harness


def test_a_48_mb_csv_of_a_million_columns_is_rejected_quickly_in_bounded_memory(
    running: Bench, races_csv: Path
) -> None:
    # GIVEN the race file's columns and a million more
    data = wide_csv(races_csv.read_bytes(), 1_000_000, 20)
    assert round(len(data) / 1e6, 1) == 47.9
    # WHEN it is ingested
    result = running.ingest("wide", "data.csv", data)
    # THEN it is REJECTED for its width, at once, within a bounded memory, and its report
    # is small (a 9.9 MB file of a million columns had a 10.9 MB one, beyond what Lambda
    # may return)
    assert (result["status"], result["codes"]) == ("REJECTED", ["too_many_columns"])
    assert result["peak_rss_growth_mb"] < REFUSED_PEAK_MB, result
    assert result["seconds"] < 10, result
    assert result["report_bytes"] < 2_000
