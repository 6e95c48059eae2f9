"""Shared fixtures: real moto server over HTTP, real SQLite and Postgres, generated races."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from gallop.client import GallopClient
from gallop.layout import MANIFEST_FILE, ONNX_FILE, REPORT_HTML_FILE, TARBALL_FILE
from gallop.local.stack import LocalStack, free_port
from gallop.metadata.db import engine_for, migrate, session_scope
from gallop.metadata.models import Dataset, RegisteredModel
from gallop.serving.registry import model_prefix
from gallop.spec import DatasetSpec, load_spec
from gallop.storage import Store
from gallop.synth.races import write_races
from gallop.training import runs
from gallop.training.config import run_config

EVENTS = Path(__file__).parent / "events"
SHIPPED_SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Small enough that a test can exceed it cheaply; the generated test data stays well below.
TEST_MAX_UPLOAD_BYTES = 1_000_000
# The column limit the tests run with (the default is 10,000: the same check, cheaper).
TEST_MAX_COLUMNS = 500
TEST_LIMITS = {
    "GALLOP_MAX_UPLOAD_BYTES": str(TEST_MAX_UPLOAD_BYTES),
    "GALLOP_MAX_COLUMNS": str(TEST_MAX_COLUMNS),
}


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real AWS account."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SECURITY_TOKEN",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


# -- databases ---------------------------------------------------------------------------


def postgres_admin_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_POSTGRES


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway database on the Postgres server; skips without one, except under CI."""
    from gallop.settings import normalise_database_url

    admin_url = normalise_database_url(postgres_admin_url())
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Postgres at {admin_url} is unreachable: {exc}")
        pytest.skip(f"no Postgres at {admin_url} (set DATABASE_URL): {exc.orig}")
    name = f"gallop_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    engine_for(url).dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """A migrated metadata database: SQLite in a temp dir, and Postgres."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = engine_for(url)
    migrate(eng)
    if request.param == "postgres":
        _truncate(eng)
    return eng


def _truncate(eng: Engine) -> None:
    with eng.begin() as connection:
        connection.execute(
            text(
                "TRUNCATE unclaimed_uploads, model_aliases, models, training_runs, feature_sets, "
                "uploads, dataset_versions, datasets, live_quality, drift_checks, capture_files, "
                "alias_events, traffic_policies, retraining_policies, approvals "
                "RESTART IDENTITY"
            )
        )


# -- data --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def races_spec() -> DatasetSpec:
    return load_spec(SHIPPED_SPEC)


def spec_named(spec: DatasetSpec, name: str) -> DatasetSpec:
    return spec.model_copy(update={"name": name})


@pytest.fixture(scope="session")
def races_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 800 runners of generated race history (well under the test upload limit)."""
    out = tmp_path_factory.mktemp("races") / "races.csv"
    write_races(80, seed=11, out=out)
    return out


READER = "viewer"


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def registered_model(
    engine: Engine,
    dataset: Dataset,
    run_id: str,
    *,
    version: str = "v-1",
    config: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    files: Store | None = None,
) -> str:
    """A ranking model registered for a run of the dataset, as training leaves its row (the
    run's `config`: the default bases by default; `manifest` adds to the stored one); with
    `files`, the files promotion checks (model.onnx, manifest.json) put in that store."""
    runs.start_run(
        engine,
        run_id=run_id,
        dataset_id=dataset.id,
        version_id=version,
        spec_hash=dataset.spec_hash,
        code_version="c0de",
        config=config or run_config(dataset.name, "ranking", None, {}, 0.2),
    )
    model_id = runs.model_id_for(run_id)
    prefix = model_prefix(model_id)
    with session_scope(engine) as session:
        session.add(
            RegisteredModel(
                model_id=model_id,
                run_id=run_id,
                dataset_id=dataset.id,
                task="ranking",
                artifact_key=prefix + TARBALL_FILE,
                onnx_key=prefix + ONNX_FILE,
                manifest_key=prefix + MANIFEST_FILE,
                report_key=prefix + REPORT_HTML_FILE,
                manifest={"task": "ranking", "dataset": dataset.name} | (manifest or {}),
            )
        )
    if files is not None:
        files.put_bytes(prefix + ONNX_FILE, b"onnx", "application/octet-stream")
        files.put_json(prefix + MANIFEST_FILE, {"run_id": run_id})
    return model_id


# -- the local stack over HTTP -----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """moto server on 127.0.0.1, S3 → SQS notifications, the ingest poller and the API."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    state = tmp_path_factory.mktemp("state")
    local = LocalStack(
        state,
        quiet=True,
        settings_overrides=TEST_LIMITS,
        visibility_timeout=1,
        role_keys={READER: "reader"},  # stack.api_keys[READER]: a key that may only read
    ).start()
    local.serve_api(free_port())
    yield local
    local.stop()
    mp.undo()


@pytest.fixture()
def client(stack: LocalStack) -> Iterator[GallopClient]:
    assert stack.api_url is not None
    api = GallopClient(stack.api_url, stack.api_key)
    yield api
    api.close()


@contextmanager
def paused_poller(stack: LocalStack, which: str = "poller") -> Iterator[None]:
    """Stop a poller ("poller": ingest, or "features_poller") so a test can play that
    function itself; a fresh poller takes over afterwards."""
    from gallop.local.lambda_runtime import SqsPoller

    old = getattr(stack, which)
    assert old is not None
    old.stop()
    try:
        yield
    finally:
        fresh = SqsPoller(old.sqs, old.queue_url, old.queue_arn, old.handler, old.function_name)
        setattr(stack, which, fresh)
        fresh.start()
