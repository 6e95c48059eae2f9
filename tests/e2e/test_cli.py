"""The `gallop` command, run as a user runs it: a new process, the real local path."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from gallop.client import GallopClient
from gallop.local.stack import LocalStack, free_port
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races, write_races
from tests.conftest import SHIPPED_SPEC, spec_named, unique_name


def gallop(
    *args: str, state: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "GALLOP_STATE_DIR": str(state), **(env or {})}
    for name in ("GALLOP_API_URL", "GALLOP_API_KEY"):  # only where a test sets them
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "gallop.cli", *args],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_version_prints_the_packages_version_and_exits_0(tmp_path: Path) -> None:
    from gallop import __version__

    done = gallop("--version", state=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"gallop {__version__}")


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


def test_ingest_reads_stdin_and_prints_one_json_document_with_progress_on_stderr(
    tmp_path: Path, races_csv: Path
) -> None:
    # WHEN a file is piped in with --json
    done = gallop(
        "ingest", "-", "--format", "csv", "--spec", str(SHIPPED_SPEC), "--json",
        state=tmp_path, stdin=races_csv.read_text(),
    )  # fmt: skip
    # THEN stdout is the version as one JSON document, and the waiting went to stderr
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    assert version["status"] == "VALID" and version["row_count"] == len(pd.read_csv(races_csv))
    assert "uploading stdin" in done.stderr and "waiting for validation" in done.stderr

    # AND stdin without --format is a usage error, said on stderr
    unsure = gallop("ingest", "-", "--spec", str(SHIPPED_SPEC), state=tmp_path, stdin="a\n1\n")
    assert unsure.returncode == 2 and "needs --format" in unsure.stderr and not unsure.stdout


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
        assert f"using the running local stack at http://127.0.0.1:{port}" in ingest.stderr
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
    small = ("--bases", "lambdarank,linear", "--set", "num_boost_round=30")  # any model will do
    trained = gallop(
        "train",
        "--data",
        str(races),
        "--spec",
        spec,
        "--out",
        str(work / "model"),
        *small,
        state=work,
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
        "--json",
        state=work,
    )
    assert built.returncode == 0, built.stderr
    features = json.loads((work / "model" / "manifest.json").read_text())["features"]
    assert json.loads(built.stdout)["features"] == features
    frame = pd.read_parquet(work / "f.parquet")
    last_three = frame["race_id"].isin(frame["race_id"].unique()[-3:])
    return work / "model", frame.loc[last_three, ["race_id", "horse_id", *features]]


def predict(
    model: Path | str, path: Path, *options: str, state: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = ("predict", "--model", str(model), "--input", str(path), *options)
    return gallop(*command, state=state, stdin=stdin)


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
    assert no_file.returncode == 2 and "no such file" in no_file.stderr  # a usage error


def test_predict_reads_rows_from_stdin(
    tmp_path: Path, model_and_rows: tuple[Path, pd.DataFrame]
) -> None:
    model, rows = model_and_rows
    as_csv = tmp_path / "rows.csv"
    rows.to_csv(as_csv, index=False)
    from_file = predict(model, as_csv, state=tmp_path)
    # CSV and JSON piped in (told apart by their first character) answer as the file does
    piped_csv = predict(model, Path("-"), state=tmp_path, stdin=as_csv.read_text())
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    piped_json = predict(model, Path("-"), state=tmp_path, stdin=json.dumps(records))
    for piped in (piped_csv, piped_json):
        assert piped.returncode == 0, piped.stderr
    assert json.loads(piped_csv.stdout) == json.loads(from_file.stdout)
    scores = [p["score"] for p in json.loads(piped_json.stdout)["predictions"]]
    expected = [p["score"] for p in json.loads(from_file.stdout)["predictions"]]
    assert scores == pytest.approx(expected, abs=1e-6)


def test_a_csv_input_keeps_zero_padded_ids_as_text_and_reads_numbers() -> None:
    from gallop.serving.rows import csv_column

    # ingestion reads CSV as text: id 000050 is "000050", not 50
    assert csv_column(["000050", "000051"]) == ["000050", "000051"]
    assert csv_column(["57.5", "", "58"]) == [57.5, None, 58.0]  # empty: missing
    assert csv_column(["H1", "7"]) == ["H1", "7"]


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
    # WHEN it trains with the second file as its test set (the first piped in, --json)
    args = ["--spec", str(spec), "--bases", f"{task},linear", "--set", "num_boost_round=30"]
    done = gallop(
        "train", "--data", "-", "--format", "csv", "--test", str(tmp_path / "test.csv"),
        *args, "--out", str(tmp_path / "model"), "--json",
        state=tmp_path, stdin=(tmp_path / "train.csv").read_text(),
    )  # fmt: skip
    # THEN it is judged on exactly the test file's 200 rows, and serves a model fitted on all
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "test"
    # AND stdout is the result as JSON, the jobs' progress went to stderr
    result = json.loads(done.stdout)
    assert (result["rows"], result["metrics"]) == (manifest["rows"], manifest["metrics"])
    assert "stack: done" in done.stderr
    assert manifest["rows"] == {
        "train": 500,
        "evaluated": 200,
        "served_model_fitted_on": 700,
        "single_row_groups_left_out": 0,
    }


def test_train_with_a_test_file_of_later_races(tmp_path: Path) -> None:
    # GIVEN 60 generated races, the last 15 of them in a file of their own
    write_races(60, seed=3, out=tmp_path / "all.csv")
    runners = pd.read_csv(tmp_path / "all.csv", dtype=str, keep_default_na=False)
    later = runners["race_id"].isin(runners["race_id"].unique()[-15:])
    runners[~later].to_csv(tmp_path / "train.csv", index=False)
    runners[later].to_csv(tmp_path / "test.csv", index=False)
    # WHEN it trains with that file as its test set
    done = gallop(
        "train", "--data", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
        "--spec", str(SHIPPED_SPEC), "--bases", "lambdarank,linear",
        "--set", "num_boost_round=30", "--out", str(tmp_path / "model"), state=tmp_path,
    )  # fmt: skip
    # THEN its races are judged on exactly those runners (their form from the earlier
    # races), and the served model is fitted on every runner
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "test"
    assert manifest["rows"]["evaluated"] == int(later.sum())
    assert manifest["rows"]["served_model_fitted_on"] == len(runners)
    assert manifest["metrics"]["stack"]["ndcg@1"] is not None


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


# -- gallop models and runs against the local stack ------------------------------------------


@pytest.fixture(scope="module")
def trained_run(stack: LocalStack, races_spec: DatasetSpec) -> dict[str, Any]:
    """One small run on the module's local stack, SUCCEEDED, with its registered model."""
    assert stack.api_url is not None
    client = GallopClient(stack.api_url, stack.api_key)
    spec = spec_named(races_spec, unique_name("cli"))
    runners, _ = generate_races(120, seed=4)
    client.register_dataset(spec)
    upload_id = client.upload_bytes(spec.name, runners.to_csv(index=False).encode(), "csv")
    version_id = client.wait_for_upload(spec.name, upload_id, timeout=120)["version_id"]
    assert client.wait_for_features(spec.name, version_id, timeout=120)["status"] == "READY"
    started = client.start_training_run(  # two cheap bases: a model is all these tests need
        spec.name, bases=["lambdarank", "linear"], hyperparameters={"num_boost_round": 20}
    )
    run = client.wait_for_training_run(started["run_id"], timeout=600)
    client.close()
    assert run["status"] == "SUCCEEDED", run["reason"]
    return {**run, "dataset": spec.name}


def api_env(stack: LocalStack) -> dict[str, str]:
    assert stack.api_url is not None
    return {"GALLOP_API_URL": stack.api_url, "GALLOP_API_KEY": stack.api_key}


def test_models_list_show_promote_reach_the_api_named_by_the_environment(
    tmp_path: Path, stack: LocalStack, trained_run: dict[str, Any]
) -> None:
    model_id = trained_run["model"]["model_id"]
    env = api_env(stack)  # no --api, and no local stack in tmp_path: only the environment

    listed = gallop("models", "list", "--json", state=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert model_id in {m["model_id"] for m in json.loads(listed.stdout)}

    shown = gallop("models", "show", model_id, "--json", state=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    model = json.loads(shown.stdout)
    assert model["model_id"] == model_id and model["run_id"] == trained_run["run_id"]
    assert model["features"] and model["task"] == "ranking"

    promoted = gallop(
        "models", "promote", model_id, "--alias", "challenger", "--json", state=tmp_path, env=env
    )
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout) | {"previous": None} == {
        "alias": "challenger",
        "dataset": trained_run["dataset"],
        "model_id": model_id,
        "previous": None,
    }
    table = gallop("models", "list", state=tmp_path, env=env)
    line = next(line for line in table.stdout.splitlines() if line.startswith(model_id))
    assert line.endswith("challenger")
    assert not (tmp_path / "endpoints.json").exists(), "no local stack was started"


def test_ingest_append_uploads_under_the_append_folder_and_prints_the_version(
    tmp_path: Path, stack: LocalStack, races_spec: DatasetSpec
) -> None:
    # GIVEN a dataset's history ingested, and the next races' results in a file of their own
    spec = spec_named(races_spec, unique_name("grow"))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    runners, _ = generate_races(40, seed=8)
    today = runners["race_id"].isin(runners["race_id"].unique()[-5:])
    runners[~today].to_csv(tmp_path / "history.csv", index=False)
    runners[today].to_csv(tmp_path / "today.csv", index=False)
    env = api_env(stack)
    history = gallop("ingest", str(tmp_path / "history.csv"), "--spec", str(spec_file),
                     "--json", state=tmp_path, env=env)  # fmt: skip
    assert history.returncode == 0, history.stderr
    history_id = json.loads(history.stdout)["version_id"]

    # WHEN the day is ingested with --append
    done = gallop("ingest", str(tmp_path / "today.csv"), "--spec", str(spec_file), "--append",
                  "--json", state=tmp_path, env=env)  # fmt: skip

    # THEN it went up as an append, under raw/{dataset}/append/, and its version (with the
    # lineage fields) is the one JSON document on stdout
    assert done.returncode == 0, done.stderr
    assert "as an append" in done.stderr
    version = json.loads(done.stdout)
    assert version["source_key"].startswith(f"raw/{spec.name}/append/")
    lineage = version["parent_version_id"], version["rows_added"], version["rows_replaced"]
    assert lineage == (history_id, int(today.sum()), 0)
    client = GallopClient(env["GALLOP_API_URL"], env["GALLOP_API_KEY"])
    (upload,) = client.uploads(spec.name, prefix=f"raw/{spec.name}/append/")
    client.close()
    assert (upload["mode"], upload["corrections"]) == ("append", False)

    # AND --corrections alone is a usage error
    alone = gallop("ingest", str(tmp_path / "today.csv"), "--spec", str(spec_file),
                   "--corrections", state=tmp_path, env=env)  # fmt: skip
    assert alone.returncode == 2 and "--append" in alone.stderr and not alone.stdout


def test_runs_show_list_and_a_refused_cancel(
    tmp_path: Path, stack: LocalStack, trained_run: dict[str, Any]
) -> None:
    run_id, env = trained_run["run_id"], api_env(stack)
    shown = gallop("runs", "show", run_id, "--json", state=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "SUCCEEDED"

    # WHEN a run that has ended is cancelled THEN the API's refusal is one line, exit 1
    cancel = gallop("runs", "cancel", run_id, state=tmp_path, env=env)
    assert cancel.returncode == 1 and cancel.stdout == ""
    assert cancel.stderr.startswith("gallop: ") and cancel.stderr.count("\n") == 1
    assert "(409)" in cancel.stderr and "Traceback" not in cancel.stderr

    listed = gallop(
        "runs", "list", "--dataset", trained_run["dataset"], "--json", state=tmp_path, env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [run_id]


def test_api_errors_and_missing_keys_are_one_line_on_stderr(
    tmp_path: Path, stack: LocalStack
) -> None:
    env = api_env(stack)
    unknown = gallop("models", "show", "m-0000", state=tmp_path, env=env)
    assert unknown.returncode == 1 and "m-0000" in unknown.stderr and "(404)" in unknown.stderr
    wrong_key = gallop(
        "models", "list", state=tmp_path, env={**env, "GALLOP_API_KEY": "not-the-key"}
    )
    assert wrong_key.returncode == 1 and wrong_key.stderr.count("\n") == 1
    assert "(401)" in wrong_key.stderr or "(403)" in wrong_key.stderr
    # --api on the command line wins over the environment, and needs a key from somewhere
    no_key = gallop("runs", "list", "--api", "http://127.0.0.1:9", state=tmp_path)
    assert no_key.returncode == 2 and "needs a key" in no_key.stderr
    unreachable = gallop("runs", "list", "--api", "http://127.0.0.1:9", state=tmp_path, env=env)
    assert unreachable.returncode == 1 and "cannot reach the API" in unreachable.stderr


# -- the README -----------------------------------------------------------------------------


# How a command reaches the API: the paragraph under the table says it once for all.
CONNECTION = {"-h", "--help", "--api", "--api-key", "--state-dir"}


def test_the_readme_command_table_lists_every_command_and_its_options() -> None:
    from gallop.cli import parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [re.split(r"(?<!\\)\|", line) for line in readme.splitlines()]  # not FILE\|-
    table = {
        cells[1].strip().strip("`"): set(re.findall(r"--[a-z][a-z-]*", cells[3]))
        for cells in rows
        if len(cells) > 3 and cells[1].strip().startswith("`gallop ")
    }
    commands = command_options(parser())
    assert set(table) == set(commands), "README command table vs the parser"
    for command, options in commands.items():
        assert table[command] <= options, f"{command}: the README names options it lacks"
        assert options - table[command] <= CONNECTION, f"{command}: the README leaves these out"


def test_every_command_that_prints_results_takes_json() -> None:
    from gallop.cli import parser

    # predict prints JSON either way and takes the option too
    assert all("--json" in options for options in command_options(parser()).values())


def command_options(p: argparse.ArgumentParser, prefix: str = "gallop") -> dict[str, set[str]]:
    """Each runnable command's option strings."""
    found: dict[str, set[str]] = {}
    if "run" in p._defaults:
        found[prefix] = {s for action in p._actions for s in action.option_strings}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= command_options(sub, f"{prefix} {name}")
    return found
