"""Training runs and the model registry: identity, schema, API contract, the Step Functions
launcher and the training Lambda (against moto, on SQLite and Postgres)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gallop import aws
from gallop.api.app import create_app
from gallop.api.problems import problem
from gallop.features.build import build_features
from gallop.ingest.canonical import to_parquet
from gallop.ingest.validate import validate
from gallop.layout import features_prefix
from gallop.local.lambda_runtime import LocalContext, load_handler
from gallop.metadata import repo
from gallop.metadata.db import migrate, session_scope
from gallop.metadata.models import Dataset, ModelAlias, RegisteredModel, TrainingRun
from gallop.settings import MissingSettings, Settings, get_settings
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store
from gallop.synth.races import generate_races
from gallop.training import runs
from gallop.training.artifacts import BadArchive, pack, publish, unpack
from gallop.training.config import (
    ALL_BASE_MODELS,
    BASE_DEFAULTS,
    DEFAULT_BASES,
    STACK_DEFAULTS,
    run_config,
)
from gallop.training.events import failure_reason
from gallop.training.identity import (
    REPO,
    TRAINING_SOURCES,
    CodeVersionUnknown,
    code_version,
    run_id_for,
    source_hash,
)
from tests.conftest import spec_named, unique_name

KEY = "test-key-123"
DATA, ARTIFACTS = "gallop-data-t", "gallop-artifacts-t"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gallop-training:1"
ROLE = "arn:aws:iam::123456789012:role/gallop-sagemaker"
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's own pattern
PASS_MACHINE = json.dumps({"StartAt": "Train", "States": {"Train": {"Type": "Pass", "End": True}}})


# -- identity ----------------------------------------------------------------------------


def test_the_run_id_is_a_hash_of_config_data_version_features_and_code() -> None:
    config = run_config("races", "ranking", None, {"num_boost_round": 20}, 0.2)
    run_id = run_id_for(config, "v-1", "spec-1", "code-1")
    assert re.fullmatch(r"[0-9a-f]{20}", run_id)
    # The same inputs, however written, are the same run ...
    reordered = dict(reversed(list(config.items())))
    assert run_id_for(reordered, "v-1", "spec-1", "code-1") == run_id
    defaults = run_config("races", "ranking", list(config["bases"]), {"num_boost_round": 20}, 0.2)
    assert run_id_for(defaults, "v-1", "spec-1", "code-1") == run_id
    spelt_out = {"num_boost_round": 20, "coverage": 0.9, "meta_l2": 0.001, "folds": 5}
    spelt_out = run_config("races", "ranking", None, spelt_out, 0.2)
    assert run_id_for(spelt_out, "v-1", "spec-1", "code-1") == run_id
    whole, fraction = (
        run_config("races", "ranking", None, {"learning_rate": rate}, 0.2) for rate in (1, 1.0)
    )
    assert run_id_for(whole, "v", "s", "c") == run_id_for(fraction, "v", "s", "c")
    # ... and any change to one of them is another run.
    changed = {
        run_id_for({**config, "test_share": 0.25}, "v-1", "spec-1", "code-1"),
        run_id_for(
            run_config("races", "ranking", None, {"num_boost_round": 21}, 0.2),
            "v-1",
            "spec-1",
            "code-1",
        ),
        run_id_for({**config, "bases": ["lambdarank"]}, "v-1", "spec-1", "code-1"),
        run_id_for(
            run_config("races", "ranking", None, {"num_boost_round": 20, "time_limit": 60}, 0.2),
            "v-1",
            "spec-1",
            "code-1",
        ),
        run_id_for(config, "v-2", "spec-1", "code-1"),
        run_id_for(config, "v-1", "spec-2", "code-1"),
        run_id_for(config, "v-1", "spec-1", "code-2"),
    }
    assert len(changed) == 7 and run_id not in changed


def _copy_sources(root: Path) -> None:
    for pattern in TRAINING_SOURCES:
        for path in REPO.glob(pattern):
            target = root / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def test_the_code_version_is_a_hash_of_the_training_sources(tmp_path: Path) -> None:
    # GIVEN a copy of the training sources elsewhere (another machine's checkout)
    copy = tmp_path / "checkout"
    _copy_sources(copy)
    original = source_hash(REPO)
    assert source_hash(copy) == original
    # Line endings do not make another version ...
    stack_job = copy / "training_jobs" / "stack.py"
    stack_job.write_bytes(stack_job.read_bytes().replace(b"\n", b"\r\n"))
    assert source_hash(copy) == original
    # ... code outside the training path does not either ...
    (copy / "shared" / "gallop" / "api").mkdir(parents=True)
    (copy / "shared" / "gallop" / "api" / "routes.py").write_text("x = 1\n")
    assert source_hash(copy) == original
    # ... but a change to a feature, a model or a job does, and so does a new job.
    features = sorted((copy / "shared" / "gallop" / "features").glob("*.py"))[0]
    features.write_text(features.read_text() + "\n# changed\n")
    assert source_hash(copy) != original
    features.write_text(features.read_text().removesuffix("\n# changed\n"))
    assert source_hash(copy) == original
    (copy / "training_jobs" / "another.py").write_text("")
    assert source_hash(copy) != original
    with pytest.raises(CodeVersionUnknown, match="GALLOP_CODE_VERSION"):
        source_hash(tmp_path / "empty")


def test_the_code_version_is_the_same_in_another_process_and_can_be_set() -> None:
    probe = "from gallop.training.identity import code_version; print(code_version())"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    other = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", env=env, capture_output=True, text=True
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == code_version(Settings()) == source_hash(REPO)[:16]
    assert code_version(Settings(code_version="0123abcd")) == "0123abcd"


# -- schema and repository -----------------------------------------------------------------


def _dataset(engine: Engine, spec: DatasetSpec) -> Dataset:
    return repo.register_dataset(engine, spec)[0]


def _model_fields(dataset: Dataset, run_id: str = "ab" * 10) -> dict[str, Any]:
    """A registered model's row for the run, its keys made up."""
    return {
        "run_id": run_id,
        "dataset_id": dataset.id,
        "task": "ranking",
        "artifact_key": "a",
        "onnx_key": "o",
        "manifest_key": "m",
        "report_key": "r",
        "manifest": {},
    }


def _run_fields(dataset: Dataset, run_id: str = "ab" * 10, **changes: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "dataset_id": dataset.id,
        "version_id": "v-1",
        "spec_hash": dataset.spec_hash,
        "code_version": "c0de",
        "config": run_config(dataset.name, "ranking", None, {}, 0.2),
        **changes,
    }


def test_migration_0004_creates_runs_and_models_and_goes_down_and_up(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {"training_runs", "models"} <= tables
    columns = {c["name"] for c in inspect(engine).get_columns("training_runs")}
    assert {"run_id", "config", "status", "stage", "reason", "metrics", "execution"} <= columns
    migrate(engine, "0003", down=True)
    assert not {"training_runs", "models"} & set(inspect(engine).get_table_names())
    migrate(engine)
    assert {"training_runs", "models"} <= set(inspect(engine).get_table_names())

    # The database itself refuses an unknown status, a short run id and a second model.
    dataset = _dataset(engine, races_spec)
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(TrainingRun(status="DONE", attempt=1, **_run_fields(dataset)))
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(TrainingRun(status="PENDING", attempt=1, **_run_fields(dataset, "abc")))
    runs.start_run(engine, **_run_fields(dataset))
    model = _model_fields(dataset)
    with session_scope(engine) as session:
        session.add(RegisteredModel(model_id="m-1", **model))
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(RegisteredModel(model_id="m-2", **model))


def test_a_run_starts_once_and_a_failed_run_starts_again(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset = _dataset(engine, races_spec)
    run, started = runs.start_run(engine, **_run_fields(dataset))
    assert started and (run.status, run.attempt, run.stage) == ("PENDING", 1, "queued")
    again, started_again = runs.start_run(engine, **_run_fields(dataset))
    assert not started_again and again.run_id == run.run_id

    runs.mark_running(engine, run.run_id, "local", "base 1/3 done")
    assert not runs.start_run(engine, **_run_fields(dataset))[1]
    failed = runs.mark_run_failed(engine, run.run_id, "base job failed: num_leaves=1")
    assert (failed.status, failed.reason) == ("FAILED", "base job failed: num_leaves=1")

    restarted, started = runs.start_run(engine, **_run_fields(dataset))
    assert started
    assert (restarted.status, restarted.attempt, restarted.reason) == ("PENDING", 2, None)
    # Two requests restarting the same failed attempt start it once.
    stale = runs.mark_run_failed(engine, run.run_id, "again")
    assert runs._restart(engine, stale) and not runs._restart(engine, stale)
    with pytest.raises(runs.RunNotFound):
        runs.mark_run_failed(engine, "cd" * 10, "no such run")


def test_a_run_is_cancelled_once_stays_cancelled_and_may_start_again(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset = _dataset(engine, races_spec)
    run, _ = runs.start_run(engine, **_run_fields(dataset))
    runs.mark_running(engine, run.run_id, "local", "base 1/3 done")
    cancelled = runs.mark_cancelled(engine, run.run_id)
    assert (cancelled.status, cancelled.reason) == ("CANCELLED", runs.CANCELLED)
    # what the stopped jobs report afterwards does not change it
    assert runs.mark_run_failed(engine, run.run_id, "base job failed").status == "CANCELLED"
    with pytest.raises(runs.RunEnded, match="already ended: CANCELLED"):
        runs.mark_cancelled(engine, run.run_id)
    with pytest.raises(runs.RunNotFound):
        runs.mark_cancelled(engine, "cd" * 10)
    restarted, started = runs.start_run(engine, **_run_fields(dataset))
    assert started and (restarted.status, restarted.attempt) == ("PENDING", 2)


def test_migration_0007_allows_cancelled_and_goes_down_and_up(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset = _dataset(engine, races_spec)
    run, _ = runs.start_run(engine, **_run_fields(dataset))
    runs.mark_cancelled(engine, run.run_id)
    # down: the older schema knows no CANCELLED; such a run becomes a FAILED one
    migrate(engine, "0006", down=True)
    assert runs.get_run(engine, run.run_id).status == "FAILED"
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(TrainingRun(status="CANCELLED", attempt=1, **_run_fields(dataset, "ef" * 8)))
    migrate(engine)
    runs.start_run(engine, **_run_fields(dataset, "ef" * 8))
    assert runs.mark_cancelled(engine, "ef" * 8).status == "CANCELLED"
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(TrainingRun(status="DONE", attempt=1, **_run_fields(dataset, "fe" * 8)))


def test_migrating_keeps_runs_their_models_and_aliases(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    # GIVEN a database of an older gallop holding a run whose model is promoted (rows that
    # point at the run: SQLite must copy training_runs to alter it)
    migrate(engine, "0005", down=True)
    dataset = _dataset(engine, races_spec)
    runs.start_run(engine, **_run_fields(dataset))
    with session_scope(engine) as session:
        session.add(RegisteredModel(model_id="m-1", **_model_fields(dataset)))
        session.flush()
        # the alias table of then (no dataset): raw SQL, not today's class
        session.execute(
            text(
                "INSERT INTO model_aliases (alias, model_id, updated_at) "
                "VALUES ('champion', 'm-1', CURRENT_TIMESTAMP)"
            )
        )
    # WHEN it is brought to the newest schema (as a local stack's start does)
    migrate(engine)
    # THEN every row is there (the alias on its model's dataset), and runs may be CANCELLED
    assert runs.find_model(engine, "ab" * 10).model_id == "m-1"  # type: ignore[union-attr]
    with session_scope(engine) as session:
        alias = session.get(ModelAlias, (dataset.id, "champion"))
        assert alias is not None and alias.model_id == "m-1"
    assert runs.mark_cancelled(engine, "ab" * 10).status == "CANCELLED"


def test_a_migration_that_fails_leaves_the_schema_as_it_was(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("Postgres runs DDL in the migration's transaction by itself")
    # GIVEN an older schema holding a model whose run is gone (as a hand-edited or broken
    # database might), which the migrations' final check refuses
    migrate(engine, "0005", down=True)
    dataset = _dataset(engine, races_spec)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        fields = _model_fields(dataset, run_id="no-such-run")
        connection.execute(RegisteredModel.__table__.insert(), [{"model_id": "m-x", **fields}])
        connection.commit()
    before = _schema(engine)
    # WHEN it is migrated THEN it fails, after the steps that copy tables, and every step
    # is undone: no table half-copied, the version as it was
    with pytest.raises(RuntimeError, match="pointing nowhere"):
        migrate(engine)
    assert _schema(engine) == before


def _schema(engine: Engine) -> tuple[str | None, dict[str, list[str]]]:
    inspector = inspect(engine)
    tables = {
        t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()
    }
    with engine.connect() as connection:
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return version, tables


def test_interrupted_local_runs_fail_and_others_are_left_alone(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset = _dataset(engine, races_spec)
    for run_id in ("a1" * 8, "a2" * 8, "a3" * 8, "a4" * 8):
        runs.start_run(engine, **_run_fields(dataset, run_id))
    runs.mark_running(engine, "a1" * 8, "local", "training")
    runs.mark_running(engine, "a2" * 8, "arn:aws:states:us-east-1:1:execution:m:x", "training")
    runs.mark_run_failed(engine, "a4" * 8, "earlier")
    assert runs.fail_interrupted_runs(engine) == 2  # the local one and the never launched one
    status = {r: runs.get_run(engine, r * 8) for r in ("a1", "a2", "a3", "a4")}
    assert {r: s.status for r, s in status.items()} == {
        "a1": "FAILED",
        "a2": "RUNNING",
        "a3": "FAILED",
        "a4": "FAILED",
    }
    assert status["a1"].reason == runs.INTERRUPTED and status["a4"].reason == "earlier"


def test_the_local_launcher_reports_progress_as_the_runs_stage(
    engine: Engine, races_spec: DatasetSpec, tmp_path: Path
) -> None:
    from gallop.training.launchers import LocalLauncher

    dataset = _dataset(engine, races_spec)
    run, _ = runs.start_run(engine, **_run_fields(dataset))
    runs.mark_running(engine, run.run_id, runs.LOCAL_EXECUTION, "preparing the data")
    store = Store("unused")  # progress touches no storage
    report = LocalLauncher(engine, store, store, tmp_path, 60)._progress(run.run_id, 3)
    stages = []
    for line in (
        "training 3 base models (2 at a time) ...",
        "  base lambdarank: done in 1.2 s",
        "  base linear: done in 0.3 s",
        "stacking, evaluating and exporting one ONNX graph ...",
    ):
        report(line)
        stages.append(runs.get_run(engine, run.run_id).stage)
    assert stages == [
        "training 3 base models (2 at a time) ...",
        "base 1/3 done",
        "base 2/3 done",
        "stacking, evaluating and exporting one ONNX graph ...",
    ]


# -- the split ------------------------------------------------------------------------------


def test_without_times_the_test_share_is_a_seeded_draw_of_whole_groups() -> None:
    from gallop.training.runner import holdout_split as split

    frame = pd.DataFrame({"race_id": [f"r{i // 4}" for i in range(200)], "x": range(200)})
    manifest = {"group": "race_id", "time": None}
    train, test = split(frame, manifest, 0.2)
    assert test["race_id"].nunique() == 10 and len(train) + len(test) == 200
    assert not set(train["race_id"]) & set(test["race_id"])  # a race is never split
    assert test.equals(split(frame, manifest, 0.2)[1])  # the same run, the same split
    plain_train, plain_test = split(frame.drop(columns="race_id"), {"group": None}, 0.25)
    assert (len(plain_train), len(plain_test)) == (150, 50)


# -- artifacts -----------------------------------------------------------------------------


def test_a_model_archive_depends_on_its_files_alone() -> None:
    files = {"model.onnx": b"\x08\x01", "manifest.json": b"{}", "base_0.txt": b"tree"}
    assert pack(files) == pack(dict(reversed(list(files.items()))))
    assert unpack(pack(files)) == files
    assert pack(files) != pack({**files, "base_0.txt": b"other tree"})


def test_an_archive_that_would_leave_the_model_folder_is_refused() -> None:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("./model.onnx", "../escape.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BadArchive, match="escape"):
        unpack(buffer.getvalue())


# -- the API's checks ----------------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Engine]]:
    # Nothing here reaches S3: every request is refused before a run would start.
    settings = Settings(state_dir=tmp_path, api_keys=KEY, aws_endpoint_url="http://127.0.0.1:9")
    app = create_app(settings)
    engine = app.state.engine()
    migrate(engine)
    with TestClient(app, headers={"x-api-key": KEY}) as client:
        yield client, engine


def _version(engine: Engine, dataset: Dataset, version_id: str, status: str = "VALID") -> None:
    repo.record_version(
        engine,
        dataset,
        f"u-{version_id}",
        "etag",
        version_id=version_id,
        status=status,
        content_hash=version_id,
        source_key="raw/x",
        report={"errors": [], "warnings": []},
    )


def _feature_set(engine: Engine, dataset: Dataset, version_id: str, **fields: Any) -> None:
    repo.record_feature_set(
        engine, dataset, version_id=version_id, spec_hash=dataset.spec_hash, **fields
    )


def test_a_run_needs_a_known_dataset_a_valid_version_and_ready_features(
    api: tuple[TestClient, Engine], races_spec: DatasetSpec
) -> None:
    client, engine = api

    def post(**body: Any) -> tuple[int, str]:
        reply = client.post("/v1/training-runs", json={"dataset": races_spec.name, **body})
        return reply.status_code, json.dumps(reply.json())

    missing = problem(404, f"no dataset named {races_spec.name!r}")
    assert post() == (404, json.dumps(missing))
    dataset = _dataset(engine, races_spec)
    status, says = post()
    assert status == 409 and "no VALID version" in says
    _version(engine, dataset, "v-bad", "REJECTED")
    status, says = post(version="v-bad")
    assert status == 409 and "REJECTED" in says
    assert post(version="v-none")[0] == 404
    _version(engine, dataset, "v-1")
    status, says = post()
    assert status == 409 and "not computed yet" in says
    _feature_set(engine, dataset, "v-1", status="FAILED", reason="rolling[0]: unknown column")
    status, says = post(version="v-1")
    assert status == 409 and "FAILED: rolling[0]: unknown column" in says


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"bases": ["adaboost"]}, "body.bases: Value error, unknown base model(s) 'adaboost'; "),
        ({"bases": ["binary"]}, "'binary' cannot be trained for a ranking task; valid: lambdarank"),
        ({"bases": []}, "body.bases"),
        ({"bases": ["lambdarank", "lambdarank"]}, "named twice"),
        ({"test_share": 1.5}, "body.test_share"),
        ({"hyperparameters": {"model": "lambdarank"}}, "set by gallop"),
        ({"hyperparameters": {"search_seconds": 5}}, "set by gallop"),
        ({"hyperparameters": {"fit_seconds": 5}}, "set by gallop"),
        ({"time_limit": 0}, "body.time_limit"),
        ({"hyperparameters": {"num_leaves": {"deep": 1}}}, "body.hyperparameters.num_leaves"),
        ({"epochs": 3}, "body.epochs"),
        ({"dataset": "Not A Name"}, "body.dataset"),
    ],
)
def test_a_bad_run_request_is_422_naming_the_problem(
    api: tuple[TestClient, Engine], races_spec: DatasetSpec, body: dict, says: str
) -> None:
    client, engine = api
    dataset = _dataset(engine, races_spec)
    _version(engine, dataset, "v-1")
    _feature_set(engine, dataset, "v-1", status="READY", data_key="d", manifest_key="m")
    reply = client.post("/v1/training-runs", json={"dataset": races_spec.name, **body})
    assert reply.status_code == 422
    assert says in json.dumps(reply.json()), reply.json()
    if body == {"bases": ["adaboost"]}:
        assert "valid: " + ", ".join(sorted(ALL_BASE_MODELS)) in reply.json()["detail"]
    with session_scope(engine) as session:
        assert session.scalars(select(TrainingRun)).all() == []


def test_every_bad_hyperparameter_is_listed_before_anything_is_queued(
    api: tuple[TestClient, Engine], races_spec: DatasetSpec
) -> None:
    # GIVEN a dataset whose features are READY
    client, engine = api
    dataset = _dataset(engine, races_spec)
    _version(engine, dataset, "v-1")
    _feature_set(engine, dataset, "v-1", status="READY", data_key="d", manifest_key="m")
    bad = {
        "num_boost_round": 1e9,  # a float, and past the cost bound
        "early_stopping_rounds": True,  # a boolean is not a number
        "learning_rate": -0.1,
        "epochs": 3,  # not a setting
        "num_leaves": "31",  # a string for a whole number
        "l2": float("nan"),
        "meta_l2": float("inf"),
        "calibration": "sideways",
        "seed": 10**9 + 0.5,
    }
    # WHEN a run asks for all of them at once (json.dumps writes NaN and Infinity)
    reply = client.post(
        "/v1/training-runs",
        content=json.dumps({"dataset": races_spec.name, "hyperparameters": bad}),
        headers={"content-type": "application/json"},
    )
    # THEN 422 names each one: where, what was given and why
    assert reply.status_code == 422, reply.text
    listed = {e["loc"][-1]: e for e in reply.json()["errors"]}
    assert set(listed) == set(bad)
    assert listed["num_boost_round"]["input"] == 1e9
    assert listed["num_boost_round"]["msg"] == "expected a whole number from 1 to 10000"
    assert listed["early_stopping_rounds"]["input"] is True
    assert listed["epochs"]["msg"].startswith("unknown; a run may set folds, split, seed")
    assert listed["num_leaves"]["input"] == "31"
    assert listed["l2"]["input"] == "nan" and listed["meta_l2"]["input"] == "inf"
    assert all(e["loc"][:2] == ["body", "hyperparameters"] for e in listed.values())
    assert (
        "body.hyperparameters.learning_rate: expected null or a number in (0, 1]"
        in (reply.json()["detail"])
    )
    # AND nothing was queued
    with session_scope(engine) as session:
        assert session.scalars(select(TrainingRun)).all() == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"hyperparameters": {"num_boost_round": 10_001}}, "body.hyperparameters.num_boost_round"),
        ({"time_limit": 86_401}, "body.time_limit"),
        ({"hyperparameters": {"time_limit": 86_401}}, "body.hyperparameters.time_limit"),
        ({"time_limit": True}, "body.time_limit"),
        ({"test_share": "0.2"}, "body.test_share"),
        ({"hyperparameters": {"bagging": 1}}, "body.hyperparameters.bagging"),
        ({"hyperparameters": {"learning_rate": "0.1"}}, "body.hyperparameters.learning_rate"),
    ],
)
def test_a_run_past_the_cost_bounds_or_of_the_wrong_type_is_422(
    api: tuple[TestClient, Engine], races_spec: DatasetSpec, body: dict, where: str
) -> None:
    client, engine = api
    _dataset(engine, races_spec)
    reply = client.post("/v1/training-runs", json={"dataset": races_spec.name, **body})
    assert reply.status_code == 422 and reply.json()["detail"].startswith(where), reply.text


def test_a_good_config_is_accepted(api: tuple[TestClient, Engine], races_spec: DatasetSpec) -> None:
    client, engine = api
    dataset = _dataset(engine, races_spec)
    _version(engine, dataset, "v-1")
    _feature_set(engine, dataset, "v-1", status="READY", data_key="d", manifest_key="m")
    good = {"num_boost_round": 10_000, "learning_rate": 0.1, "bagging": False, "meta_l2": 0}
    reply = client.post(
        "/v1/training-runs",
        json={"dataset": races_spec.name, "hyperparameters": good, "time_limit": 86_400},
    )
    assert reply.status_code == 202, reply.text
    chosen = reply.json()["config"]["hyperparameters"]
    assert chosen["num_boost_round"] == 10_000 and chosen["time_limit"] == 86_400
    assert chosen["meta_l2"] == 0.0 and chosen["bagging"] is False


def test_an_unknown_or_malformed_run_id(api: tuple[TestClient, Engine]) -> None:
    client, _ = api
    assert client.get(f"/v1/training-runs/{'ab' * 10}").status_code == 404
    malformed = client.get("/v1/training-runs/not-hex")
    assert malformed.status_code == 422 and "path.run_id" in malformed.json()["detail"]


def test_stepfunctions_needs_its_settings_at_cold_start() -> None:
    with pytest.raises(MissingSettings) as caught:
        Settings(
            database_url="sqlite://", api_keys=KEY, training_launcher="stepfunctions"
        ).require_for("api")
    assert str(caught.value) == (
        "gallop is not configured: set "
        "GALLOP_TRAINING_STATE_MACHINE_ARN (for GALLOP_TRAINING_LAUNCHER=stepfunctions), "
        "GALLOP_TRAINING_IMAGE (for GALLOP_TRAINING_LAUNCHER=stepfunctions), "
        "GALLOP_SAGEMAKER_ROLE_ARN (for GALLOP_TRAINING_LAUNCHER=stepfunctions), "
        "GALLOP_CODE_VERSION (for GALLOP_TRAINING_LAUNCHER=stepfunctions)"
    )
    Settings(database_url="sqlite://", api_keys=KEY).require_for("api")  # local: nothing more


# -- the Step Functions launcher and the training Lambda, on moto ---------------------------


@pytest.fixture()
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("GALLOP_AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        for bucket in (DATA, ARTIFACTS):
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield
    aws.reset_clients()


@pytest.fixture(scope="module")
def race_features(races_spec: DatasetSpec) -> tuple[bytes, dict[str, Any]]:
    """The features step's output for 60 generated races."""
    runners, _ = generate_races(60, seed=23)
    built = build_features(validate(runners.astype(str), races_spec).canonical, races_spec)
    return to_parquet(built.frame), built.manifest


def _ready_version(
    engine: Engine, spec: DatasetSpec, features: tuple[bytes, dict[str, Any]]
) -> str:
    """A VALID version of a new dataset whose features are READY in the data bucket."""
    dataset = _dataset(engine, spec)
    _version(engine, dataset, "v-1")
    prefix = features_prefix(spec.name, "v-1", spec.spec_hash)
    store = Store(DATA, boto3.client("s3"))
    store.put_bytes(prefix + "features.parquet", features[0], "application/vnd.apache.parquet")
    store.put_json(prefix + "manifest.json", features[1])
    _feature_set(
        engine,
        dataset,
        "v-1",
        status="READY",
        data_key=prefix + "features.parquet",
        manifest_key=prefix + "manifest.json",
    )
    return "v-1"


def _deployed_api(engine: Engine, tmp_path: Path, machine_arn: str) -> TestClient:
    settings = Settings(
        state_dir=tmp_path,
        api_keys=KEY,
        data_bucket=DATA,
        artifacts_bucket=ARTIFACTS,
        training_launcher="stepfunctions",
        training_state_machine_arn=machine_arn,
        training_image=IMAGE,
        sagemaker_role_arn=ROLE,
        code_version="c0de",
    )
    return TestClient(create_app(settings, engine=engine), headers={"x-api-key": KEY})


def _state_machine() -> str:
    return boto3.client("stepfunctions").create_state_machine(
        name=unique_name("training"),
        definition=PASS_MACHINE,
        roleArn="arn:aws:iam::123456789012:role/gallop-states",
    )["stateMachineArn"]


def _execution_input(run: dict[str, Any]) -> dict[str, Any]:
    described = boto3.client("stepfunctions").describe_execution(executionArn=run["execution"])
    return json.loads(described["input"])


def _decoded(request: dict[str, Any]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in request["HyperParameters"].items()}


def test_the_stepfunctions_launcher_starts_an_execution_with_complete_training_jobs(
    engine: Engine,
    moto_aws: None,
    races_spec: DatasetSpec,
    race_features: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
) -> None:
    # GIVEN READY features and the API configured as deployed
    spec = spec_named(races_spec, unique_name("sfn"))
    version_id = _ready_version(engine, spec, race_features)
    api = _deployed_api(engine, tmp_path, _state_machine())

    # WHEN a run is posted THEN an execution of the state machine is running it
    body = {"dataset": spec.name, "hyperparameters": {"num_boost_round": 20}, "time_limit": 240}
    reply = api.post("/v1/training-runs", json=body)
    assert reply.status_code == 202, reply.json()
    run = reply.json()
    assert run["status"] == "RUNNING" and run["stage"] == "training on SageMaker"
    assert run["execution"].endswith(f":{run['run_id']}-1")
    payload = _execution_input(run)
    assert payload["run_id"] == run["run_id"]

    # AND every job in its input is a CreateTrainingJob request SageMaker accepts
    sagemaker = boto3.client("sagemaker")
    jobs = payload["base_jobs"] + [payload["stack_job"]]
    for request in jobs:
        assert JOB_NAME.fullmatch(request["TrainingJobName"]), request["TrainingJobName"]
        sagemaker.create_training_job(**request)  # botocore validates the request's shape
        stored = sagemaker.describe_training_job(TrainingJobName=request["TrainingJobName"])
        assert stored["AlgorithmSpecification"]["TrainingImage"] == IMAGE
        assert stored["RoleArn"] == ROLE
        assert stored["OutputDataConfig"]["S3OutputPath"] == (
            f"s3://{ARTIFACTS}/training/{run['run_id']}/"
        )
        assert stored["ResourceConfig"]["InstanceType"] == "ml.m5.large"
        assert stored["StoppingCondition"]["MaxRuntimeInSeconds"] == 300  # 1.25 x 240 s
        assert all(isinstance(v, str) for v in stored["HyperParameters"].values())
        for metric in request["AlgorithmSpecification"]["MetricDefinitions"]:
            line = f"fold 1/5 done\n#metric {metric['Name']}=-1.5e-03\n"
            assert re.search(metric["Regex"], line).group(1) == "-1.5e-03"  # type: ignore[union-attr]
    assert len({r["TrainingJobName"] for r in jobs}) == len(jobs)
    assert [_decoded(r) for r in payload["base_jobs"]] == [
        {
            **BASE_DEFAULTS,
            "job": "base",
            "model": model,
            "num_boost_round": 20,
            "test_share": 0.2,
            "time_limit": 240,
            # seven bases, four at a time: two waves share 35 % of the limit for their
            # search and 30 % for their folds' fits
            "search_seconds": 42,
            "fit_seconds": 36,
        }
        for model in DEFAULT_BASES["ranking"]
    ]
    assert _decoded(payload["stack_job"]) == {
        **STACK_DEFAULTS,
        "job": "stack",
        "test_share": 0.2,
        "seed": BASE_DEFAULTS["seed"],  # the meta-learner's folds follow the bases'
        "run_id": run["run_id"],
        "data_version": version_id,
        "code_version": "c0de",
    }
    stack_metrics = {m["Name"] for m in jobs[-1]["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {"ndcg_at_1", "race_log_loss", "onnx_parity_max_abs"} <= stack_metrics

    # AND every job reads the version's feature set as the features function wrote it
    # (each holds the same test share out itself: the API never loads the data)
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in jobs[-1]["InputDataConfig"]
    }
    assert set(channels) == {"train", "bases"}
    for request in jobs:
        train = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        assert train == channels["train"]
    bucket, prefix = channels["train"].removeprefix("s3://").split("/", 1)
    assert bucket == DATA
    s3 = boto3.client("s3")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    assert manifest["features"] == race_features[1]["features"]
    s3.head_object(Bucket=bucket, Key=prefix + "features.parquet")
    # AND the stack's bases channel is where SageMaker puts every base job's model
    for request in payload["base_jobs"]:
        output = sagemaker.describe_training_job(TrainingJobName=request["TrainingJobName"])
        assert output["ModelArtifacts"]["S3ModelArtifacts"].startswith(channels["bases"])
    stack_output = sagemaker.describe_training_job(TrainingJobName=jobs[-1]["TrainingJobName"])
    assert not stack_output["ModelArtifacts"]["S3ModelArtifacts"].startswith(channels["bases"])

    # WHEN the same run is posted again THEN it is the same run, not started twice
    again = api.post("/v1/training-runs", json=body)
    assert again.status_code == 200 and again.json()["execution"] == run["execution"]


def test_cancelling_a_run_on_aws_stops_its_execution(
    engine: Engine,
    moto_aws: None,
    races_spec: DatasetSpec,
    race_features: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
) -> None:
    # GIVEN a run whose state machine execution is running
    spec = spec_named(races_spec, unique_name("stop"))
    _ready_version(engine, spec, race_features)
    api = _deployed_api(engine, tmp_path, _state_machine())
    started = api.post("/v1/training-runs", json={"dataset": spec.name})
    run = started.json()
    # (the 202 says where to follow the run, and when)
    assert started.headers["location"] == f"/v1/training-runs/{run['run_id']}"
    assert int(started.headers["retry-after"]) > 0
    states = boto3.client("stepfunctions")
    assert states.describe_execution(executionArn=run["execution"])["status"] == "RUNNING"
    # WHEN it is cancelled THEN it is CANCELLED and its execution stopped (ABORTED)
    reply = api.delete(f"/v1/training-runs/{run['run_id']}")
    assert reply.status_code == 202 and reply.json()["status"] == "CANCELLED"
    assert reply.headers["location"].endswith(f"/v1/training-runs/{run['run_id']}")
    assert int(reply.headers["retry-after"]) > 0
    assert states.describe_execution(executionArn=run["execution"])["status"] == "ABORTED"
    # AND once ended, it cannot be cancelled again
    ended = api.delete(f"/v1/training-runs/{run['run_id']}")
    assert ended.status_code == 409 and ended.json()["code"] == "conflict"


def test_a_run_that_cannot_start_fails_with_the_reason(
    engine: Engine,
    moto_aws: None,
    races_spec: DatasetSpec,
    race_features: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
) -> None:
    spec = spec_named(races_spec, unique_name("nosfn"))
    _ready_version(engine, spec, race_features)
    missing = "arn:aws:states:us-east-1:123456789012:stateMachine:gone"
    reply = _deployed_api(engine, tmp_path, missing).post(
        "/v1/training-runs", json={"dataset": spec.name}
    )
    assert reply.status_code == 202
    run = reply.json()
    assert run["status"] == "FAILED" and "could not start" in run["reason"]
    assert "StateMachineDoesNotExist" in run["reason"] and run["model"] is None


@pytest.fixture()
def training_function(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """functions/training/handler.py, configured as the CDK stack configures it."""
    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("GALLOP_ARTIFACTS_BUCKET", ARTIFACTS)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    get_settings.cache_clear()
    yield load_handler("training")
    get_settings.cache_clear()


def _model_tarball(run_id: str) -> bytes:
    manifest = {
        "run_id": run_id,
        "task": "ranking",
        "metrics": {"stack": {"ndcg@1": 0.41, "race_log_loss": 2.1}, "base_0_lambdarank": {}},
    }
    return pack(
        {
            "model.onnx": b"\x08\x09onnx graph",
            "manifest.json": json.dumps(manifest).encode(),
            "report.html": f"<html><h1>run {run_id}</h1></html>".encode(),
            "base_0.txt": b"tree",
        }
    )


def test_the_training_function_registers_the_stack_jobs_model(
    engine: Engine,
    moto_aws: None,
    races_spec: DatasetSpec,
    race_features: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
    training_function: Any,
) -> None:
    # GIVEN a run on Step Functions whose stack job wrote its model.tar.gz
    spec = spec_named(races_spec, unique_name("reg"))
    _ready_version(engine, spec, race_features)
    api = _deployed_api(engine, tmp_path, _state_machine())
    run = api.post("/v1/training-runs", json={"dataset": spec.name}).json()
    stack_job = _execution_input(run)["stack_job"]
    sagemaker = boto3.client("sagemaker")
    sagemaker.create_training_job(**stack_job)
    artifacts_uri = sagemaker.describe_training_job(TrainingJobName=stack_job["TrainingJobName"])[
        "ModelArtifacts"
    ]["S3ModelArtifacts"]
    bucket, key = artifacts_uri.removeprefix("s3://").split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=_model_tarball(run["run_id"]))

    # WHEN the state machine calls the function with it
    event = {"action": "register", "run_id": run["run_id"], "model_artifacts": artifacts_uri}
    outcome = training_function(event, LocalContext("gallop-training"))

    # THEN the model is unpacked under models/{run_id}/, registered, and the run SUCCEEDED
    model_id = f"m-{run['run_id']}"
    assert outcome == {"run_id": run["run_id"], "status": "SUCCEEDED", "model_id": model_id}
    done = api.get(f"/v1/training-runs/{run['run_id']}").json()
    assert done["status"] == "SUCCEEDED" and done["metrics"] == {
        "ndcg@1": 0.41,
        "race_log_loss": 2.1,
    }
    prefix = f"models/{run['run_id']}/"
    assert done["model"]["model_id"] == model_id
    assert done["model"]["onnx_key"] == prefix + "model.onnx"
    assert done["model"]["artifact_key"] == prefix + "model.tar.gz"
    assert prefix + "report.html" in done["report_url"] and "Signature" in done["report_url"]
    store = Store(ARTIFACTS, boto3.client("s3"))
    assert sorted(store.list_keys(prefix)) == [
        prefix + name
        for name in ("base_0.txt", "manifest.json", "model.onnx", "model.tar.gz", "report.html")
    ]
    assert store.get_bytes(prefix + "model.tar.gz") == _model_tarball(run["run_id"])
    # AND a repeated invocation (Lambda retries) registers nothing more
    assert training_function(event, LocalContext("gallop-training")) == outcome
    with session_scope(engine) as session:
        assert len(session.scalars(select(RegisteredModel)).all()) == 1


def test_registering_needs_the_runs_own_complete_model(
    engine: Engine, moto_aws: None, races_spec: DatasetSpec
) -> None:
    dataset = _dataset(engine, races_spec)
    run, _ = runs.start_run(engine, **_run_fields(dataset))
    store = Store(ARTIFACTS, boto3.client("s3"))
    other = json.loads(unpack(_model_tarball("ef" * 10))["manifest.json"])
    publish(store, run.run_id, {"manifest.json": json.dumps(other).encode()}, b"")
    with pytest.raises(runs.ArtifactMismatch, match="names run 'efef"):
        runs.register_model(engine, store, run.run_id, f"models/{run.run_id}/")
    files = unpack(_model_tarball(run.run_id))
    del files["report.html"]
    publish(store, run.run_id, files, pack(files))
    with pytest.raises(ObjectMissing, match="report.html"):
        runs.register_model(engine, store, run.run_id, f"models/{run.run_id}/")
    assert runs.find_model(engine, run.run_id) is None
    assert runs.get_run(engine, run.run_id).status == "PENDING"


def test_the_training_function_fails_a_run_with_sagemakers_reason(
    engine: Engine,
    moto_aws: None,
    races_spec: DatasetSpec,
    race_features: tuple[bytes, dict[str, Any]],
    tmp_path: Path,
    training_function: Any,
) -> None:
    spec = spec_named(races_spec, unique_name("fail"))
    _ready_version(engine, spec, race_features)
    api = _deployed_api(engine, tmp_path, _state_machine())
    run = api.post("/v1/training-runs", json={"dataset": spec.name}).json()
    job = _execution_input(run)["base_jobs"][1]["TrainingJobName"]
    # What a Catch on a createTrainingJob.sync task hands over: DescribeTrainingJob as JSON.
    cause = {
        "TrainingJobName": job,
        "TrainingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: hyperparameter num_leaves=1 is not valid",
    }
    event = {
        "action": "failed",
        "run_id": run["run_id"],
        "error": {"Error": "States.TaskFailed", "Cause": json.dumps(cause)},
    }
    outcome = training_function(event, LocalContext("gallop-training"))
    reason = f"{job}: AlgorithmError: hyperparameter num_leaves=1 is not valid"
    assert outcome == {"run_id": run["run_id"], "status": "FAILED", "reason": reason}
    failed = api.get(f"/v1/training-runs/{run['run_id']}").json()
    assert (failed["status"], failed["reason"], failed["model"]) == ("FAILED", reason, None)
    # A failed run may be started again: a new attempt, with new job and execution names.
    again = api.post("/v1/training-runs", json={"dataset": spec.name})
    assert again.status_code == 202 and again.json()["attempt"] == 2
    assert _execution_input(again.json())["base_jobs"][1]["TrainingJobName"] != job


def test_failure_reasons_read_well_whatever_failed() -> None:
    lambda_error = {"errorType": "ObjectMissing", "errorMessage": "models/x/report.html"}
    assert failure_reason({"Error": "ObjectMissing", "Cause": json.dumps(lambda_error)}) == (
        "ObjectMissing: models/x/report.html"
    )
    assert failure_reason({"Error": "States.Timeout", "Cause": "took too long"}) == (
        "States.Timeout: took too long"
    )
    assert failure_reason({"Error": "States.Timeout"}) == "States.Timeout"
    assert len(failure_reason({"Error": "E", "Cause": "x" * 10_000})) == 2000


# -- listing runs ---------------------------------------------------------------------------


def _runs_of(engine: Engine, dataset: Dataset, count: int, at: datetime) -> list[str]:
    """`count` runs of the dataset, two of them started in the same microsecond."""
    ids = []
    for i in range(count):
        run_id = f"{dataset.id:02x}{i:02x}" * 5
        when = at + timedelta(seconds=min(i, count - 2))  # the last two tie
        runs.start_run(engine, **_run_fields(dataset, run_id, created_at=when))
        ids.append(run_id)
    return ids


def test_runs_page_newest_first_by_a_cursor_that_skips_and_repeats_none(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    # GIVEN five runs of one dataset (two started at the same instant) and one of another
    first = _dataset(engine, spec_named(races_spec, "first"))
    other = _dataset(engine, spec_named(races_spec, "other"))
    at = datetime(2026, 1, 5, tzinfo=UTC)
    ids = _runs_of(engine, first, 5, at)
    _runs_of(engine, other, 1, at)
    runs.mark_cancelled(engine, ids[1])
    # WHEN they are read two at a time, following the cursor
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = runs.page_runs(engine, 2, cursor, dataset_id=first.id)
        seen += [r.run_id for r in page]
        pages += 1
        if cursor is None:
            break
    # THEN each appears once, newest first (a tie broken by the run id, descending)
    assert seen == [ids[4], ids[3], ids[2], ids[1], ids[0]] and pages == 3
    cancelled, _ = runs.page_runs(engine, 10, dataset_id=first.id, status="CANCELLED")
    assert [r.run_id for r in cancelled] == [ids[1]]
    with pytest.raises(repo.BadCursor):
        runs.page_runs(engine, 2, "bm90IGEgY3Vyc29y")


def test_get_training_runs_filters_pages_and_refuses_what_it_cannot_read(
    api: tuple[TestClient, Engine], races_spec: DatasetSpec
) -> None:
    client, engine = api
    dataset = _dataset(engine, races_spec)
    ids = _runs_of(engine, dataset, 3, datetime(2026, 1, 5, tzinfo=UTC))
    # WHEN the runs are listed a page of one at a time THEN all come, newest first
    seen, query = [], {"dataset": races_spec.name, "limit": 1}
    while True:
        page = client.get("/v1/training-runs", params=query).json()
        seen += [run["run_id"] for run in page["items"]]
        if page["next_cursor"] is None:
            break
        query["cursor"] = page["next_cursor"]
    assert seen == [ids[2], ids[1], ids[0]]
    assert client.get("/v1/training-runs", params={"status": "RUNNING"}).json() == {
        "items": [],
        "next_cursor": None,
    }
    # AND what it cannot read is a problem: an unknown dataset, status or cursor
    unknown = client.get("/v1/training-runs", params={"dataset": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    for params in ({"status": "DONE"}, {"cursor": "garbage"}, {"limit": 501}):
        refused = client.get("/v1/training-runs", params=params)
        assert refused.status_code == 422, params
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["errors"][0]["loc"][0] == "query"
