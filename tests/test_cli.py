"""The `gallop` command, run as a user runs it: a new process, the real local path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from gallop.local.stack import free_port
from tests.conftest import SHIPPED_SPEC


def gallop(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GALLOP_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "gallop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ingest_prints_the_valid_version_and_exits_0(tmp_path: Path, races_csv: Path) -> None:
    result = gallop("ingest", str(races_csv), "--spec", str(SHIPPED_SPEC), state=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "VALID version v-" in result.stdout
    assert "curated/races/v-" in result.stdout


def test_ingest_prints_the_report_and_exits_1_on_rejection(tmp_path: Path, races_csv: Path) -> None:
    frame = pd.read_csv(races_csv, dtype=str, keep_default_na=False)
    frame.loc[2, "draw"] = "inside"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    result = gallop("ingest", str(bad), "--spec", str(SHIPPED_SPEC), state=tmp_path / "state")
    assert result.returncode == 1, result.stderr
    assert "REJECTED" in result.stdout
    assert "column 'draw' has values that are not numbers (1 row: 3)" in result.stdout


def test_ingest_explains_a_bad_spec_or_missing_file(tmp_path: Path, races_csv: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntask: ranking\ntarget: position\n")
    result = gallop("ingest", str(races_csv), "--spec", str(spec), state=tmp_path)
    assert result.returncode == 2
    assert "needs 'group'" in result.stderr
    missing = gallop(
        "ingest", str(tmp_path / "nope.csv"), "--spec", str(SHIPPED_SPEC), state=tmp_path
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_synth_races_writes_runners_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = gallop(
        "synth", "races", "--races", "30", "--seed", "5", "--out", str(out), state=tmp_path
    )
    assert result.returncode == 0, result.stderr
    runners = pd.read_csv(out)
    truth = pd.read_csv(tmp_path / "r.truth.csv")
    assert runners["race_id"].nunique() == 30
    assert len(truth) == len(runners)


def test_serve_answers_on_its_port_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, races_csv: Path
) -> None:
    port = free_port()
    env = {**os.environ, "GALLOP_STATE_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "gallop.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key = _wait_for_health(f"http://127.0.0.1:{port}", tmp_path, server)
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        # gallop ingest on the same state directory goes through the running stack
        ingest = gallop("ingest", str(races_csv), "--spec", str(SHIPPED_SPEC), state=tmp_path)
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        assert f"using the running local stack at http://127.0.0.1:{port}" in ingest.stdout
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert f"API key:        {key}" in output
    assert "stopped." in output
    assert not (tmp_path / "endpoints.json").exists()
    assert (tmp_path / "gallop.db").exists()
    assert list((tmp_path / "s3").rglob("data.parquet")), "the curated data was mirrored to disk"


def _wait_for_health(url: str, state: Path, server: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, "gallop serve exited early"
        if (state / "endpoints.json").exists():
            key = json.loads((state / "endpoints.json").read_text())["api_key"]
            try:
                reply = httpx.get(f"{url}/v1/health", headers={"x-api-key": key}, timeout=2)
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code == 200:
                return key
        time.sleep(0.2)
    raise AssertionError("gallop serve did not answer within 60 s")
