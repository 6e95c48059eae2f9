"""The `gallop` command, run as a user runs it: a new process, the real local path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

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
