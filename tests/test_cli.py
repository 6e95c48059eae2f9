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
import numpy as np
import pandas as pd
import pytest

from gallop.local.stack import free_port
from gallop.synth.races import write_races
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


# -- gallop predict with a model folder: no server ---------------------------------------


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A model trained by `gallop train` on 200 races, and the feature rows of three races
    as `gallop features` computes them."""
    work = tmp_path_factory.mktemp("predict")
    races = work / "races.csv"
    write_races(200, seed=3, out=races)
    spec = str(SHIPPED_SPEC)
    trained = gallop(
        "train", "--data", str(races), "--spec", spec, "--out", str(work / "model"), state=work
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    built = gallop(
        "features",
        "--data",
        str(races),
        "--spec",
        spec,
        "--out",
        str(work / "f.parquet"),
        state=work,
    )
    assert built.returncode == 0, built.stderr
    features = json.loads((work / "model" / "manifest.json").read_text())["features"]
    frame = pd.read_parquet(work / "f.parquet")
    last_three = frame["race_id"].isin(frame["race_id"].unique()[-3:])
    return work / "model", frame.loc[last_three, ["race_id", "horse_id", *features]]


def predict(
    model: Path | str, path: Path, *options: str, state: Path
) -> subprocess.CompletedProcess[str]:
    return gallop("predict", "--model", str(model), "--input", str(path), *options, state=state)


def test_predict_with_a_model_folder_gives_each_race_win_chances_summing_to_1(
    tmp_path: Path, model_and_rows: tuple[Path, pd.DataFrame]
) -> None:
    model, rows = model_and_rows
    # GIVEN the feature rows of three races as JSON row objects (missing values as null)
    as_json = tmp_path / "rows.json"
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    as_json.write_text(json.dumps({"rows": records}))

    # WHEN they are scored with the model folder, no server anywhere
    result = predict(model, as_json, state=tmp_path / "state")

    # THEN one prediction per row, in order: win chances add up to 1 in each race,
    # ranks run 1..n, and finishing in the first three is likelier than winning
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["model_id"] and len(reply["predictions"]) == len(rows)
    scored = rows[["race_id"]].assign(**pd.DataFrame(reply["predictions"], index=rows.index))
    for _, race in scored.groupby("race_id"):
        assert race["win_probability"].sum() == pytest.approx(1.0, abs=1e-6)
        assert sorted(race["rank"]) == list(range(1, len(race) + 1))
        assert (race["place_probability"] >= race["win_probability"] - 1e-9).all()
    assert not (tmp_path / "state").exists(), "a model folder needs no local stack"

    # AND the same rows as CSV get the same predictions
    as_csv = tmp_path / "rows.csv"
    rows.to_csv(as_csv, index=False)
    from_csv = predict(model, as_csv, state=tmp_path / "state")
    assert from_csv.returncode == 0, from_csv.stderr
    assert json.loads(from_csv.stdout) == reply


def test_predict_explain_adds_the_top_reasons_of_each_row(
    tmp_path: Path, model_and_rows: tuple[Path, pd.DataFrame]
) -> None:
    model, rows = model_and_rows
    as_csv = tmp_path / "rows.csv"
    rows.to_csv(as_csv, index=False)
    result = predict(model, as_csv, "--explain", "--top-k", "2", state=tmp_path)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert len(reply["explanations"]) == len(reply["predictions"]) == len(rows)
    for prediction, explanation in zip(reply["predictions"], reply["explanations"], strict=True):
        assert explanation["score"] == pytest.approx(prediction["score"], abs=1e-4)
        assert len(explanation["top"]) == 2
        assert all(" the score by " in top["reason"] for top in explanation["top"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"rows": [{"race_id": "R1", "odds": 3.0}]}', "missing: ['distance_m'"),
        ("{not json", "not JSON"),
        ('{"rows": []}', "no rows"),
        ('{"rows": "all of them"}', '"rows" must be a list of row objects'),
        (
            '[{"race_id": "R1", "race_time": "2024-01-01T14:00", "horse_id": "H1", "odds": 3}]',
            "race-card rows",
        ),
    ],
)
def test_predict_exits_1_with_one_line_on_bad_input(
    tmp_path: Path, model_and_rows: tuple[Path, pd.DataFrame], content: str, message: str
) -> None:
    model, _ = model_and_rows
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = predict(model, bad, state=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("gallop: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_predict_exits_1_on_text_in_a_feature_or_a_missing_model_or_file(
    tmp_path: Path, model_and_rows: tuple[Path, pd.DataFrame]
) -> None:
    model, rows = model_and_rows
    typo = rows.astype(object)
    typo.iloc[1, typo.columns.get_loc("weight_kg")] = "57,5"
    as_csv = tmp_path / "typo.csv"
    typo.to_csv(as_csv, index=False)
    result = predict(model, as_csv, state=tmp_path)
    assert result.returncode == 1 and "weight_kg must be a number or null" in result.stderr

    no_model = predict(tmp_path / "nowhere", as_csv, state=tmp_path)
    assert no_model.returncode == 1 and "no such model folder" in no_model.stderr
    no_file = predict(model, tmp_path / "absent.json", state=tmp_path)
    assert no_file.returncode == 1 and "no such file" in no_file.stderr


def test_a_csv_input_keeps_zero_padded_ids_as_text_and_reads_numbers() -> None:
    from gallop.cli import _csv_column

    # ingestion reads CSV as text: id 000050 is "000050", not 50
    assert _csv_column(["000050", "000051"]) == ["000050", "000051"]
    assert _csv_column(["57.5", "", "58"]) == [57.5, None, 58.0]  # empty: missing
    assert _csv_column(["H1", "7"]) == ["H1", "7"]


# -- gallop train --test ------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_train_with_a_test_file_on_a_task_without_groups(task: str, tmp_path: Path) -> None:
    # GIVEN a table with no group column, split into two files
    rng = np.random.default_rng(5)
    x = rng.normal(size=(700, 3))
    signal = x[:, 0] - 0.5 * x[:, 1]
    y = (rng.random(700) < 1 / (1 + np.exp(-signal))).astype(int) if task == "binary" else signal
    table = pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=y)
    table[:500].to_csv(tmp_path / "train.csv", index=False)
    table[500:].to_csv(tmp_path / "test.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: plain\ntask: {task}\ntarget: y\n")
    # WHEN it trains with the second file as its test set
    args = ["--spec", str(spec), "--bases", f"{task},linear", "--set", "num_boost_round=30"]
    done = gallop(
        "train", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
        *args, "--out", str(tmp_path / "model"), state=tmp_path,
    )  # fmt: skip
    # THEN it is judged on exactly the test file's 200 rows, and serves a model fitted on all
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "test"
    assert manifest["rows"] == {
        "train": 500,
        "evaluated": 200,
        "served_model_fitted_on": 700,
        "single_row_groups_left_out": 0,
    }


def test_train_refuses_a_test_file_sharing_group_ids_with_the_data(tmp_path: Path) -> None:
    # GIVEN two race files numbered from R0000000 each, as LETOR-style files are
    write_races(30, seed=1, out=tmp_path / "a.csv")
    write_races(10, seed=2, out=tmp_path / "b.csv")
    # WHEN they are given as --data and --test
    done = gallop(
        "train", "--data", str(tmp_path / "a.csv"), "--test", str(tmp_path / "b.csv"),
        "--spec", str(SHIPPED_SPEC), "--out", str(tmp_path / "model"), state=tmp_path,
    )  # fmt: skip
    # THEN it refuses, naming the shared ids, before training anything
    assert done.returncode == 1
    assert "shares 10 race_id ids with --data" in done.stderr and "R0000000" in done.stderr
    assert not (tmp_path / "model").exists()
