"""The metadata store on SQLite and on Postgres: migrations, idempotency, constraints."""

from __future__ import annotations

import threading

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gallop.metadata import repo
from gallop.metadata.db import MIGRATIONS, migrate, session_scope
from gallop.metadata.models import DatasetVersion, UnclaimedUpload, Upload
from gallop.spec import DatasetSpec


def version_fields(version_id: str, status: str = "VALID") -> dict:
    return dict(
        version_id=version_id,
        status=status,
        content_hash=version_id * 4,
        row_count=10,
        group_count=2,
        source_key="raw/x/u/data.csv",
        data_key="curated/x/v/data.parquet",
        report_key="curated/x/v/report.json",
        report={"errors": [], "warnings": []},
    )


def test_migrations_create_the_tables_and_run_twice(engine: Engine) -> None:
    migrate(engine)  # a second time: nothing to do, nothing breaks
    tables = set(inspect(engine).get_table_names())
    assert {"datasets", "dataset_versions", "uploads", "feature_sets", "alembic_version"} <= tables
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_registering_the_same_spec_twice_is_one_dataset(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    first, created = repo.register_dataset(engine, races_spec)
    again, created_again = repo.register_dataset(engine, races_spec)
    assert created and not created_again
    assert first.id == again.id
    assert repo.spec_of(again) == races_spec


def test_another_spec_under_a_taken_name_is_a_conflict(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    repo.register_dataset(engine, races_spec)
    changed = races_spec.model_copy(update={"categorical": ["course"]})
    with pytest.raises(repo.DatasetConflict, match="another spec"):
        repo.register_dataset(engine, changed)


def test_recording_a_version_settles_its_upload(engine: Engine, races_spec: DatasetSpec) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    repo.create_upload(engine, dataset, "u1", "raw/races/u1/data.csv", "csv")
    version, created = repo.record_version(engine, dataset, "u1", "etag-1", **version_fields("v-1"))
    assert created and version.status == "VALID"
    upload = repo.get_upload(engine, dataset, "u1")
    assert (upload.status, upload.version_id) == ("VALID", "v-1")
    assert upload.processed_at is not None
    assert version.report == {"errors": [], "warnings": []}


def test_the_same_version_twice_is_stored_once(engine: Engine, races_spec: DatasetSpec) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    for upload_id in ("u1", "u2"):
        repo.create_upload(engine, dataset, upload_id, f"raw/races/{upload_id}/data.csv", "csv")
    _, first = repo.record_version(engine, dataset, "u1", "etag-1", **version_fields("v-1"))
    _, second = repo.record_version(engine, dataset, "u2", "etag-2", **version_fields("v-1"))
    assert (first, second) == (True, False)
    assert [v.version_id for v in repo.list_versions(engine, dataset)] == ["v-1"]
    assert repo.get_upload(engine, dataset, "u2").version_id == "v-1"


def test_concurrent_writers_of_one_version_leave_one_row(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    results: list[bool] = []
    errors: list[BaseException] = []

    def write(upload_id: str) -> None:
        try:
            repo.create_upload(engine, dataset, upload_id, f"raw/races/{upload_id}/d.csv", "csv")
            results.append(
                repo.record_version(engine, dataset, upload_id, "e", **version_fields("v-race"))[1]
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"u{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results) == [False] * 5 + [True]
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(DatasetVersion)) == 1
        assert session.scalar(select(func.count()).where(Upload.version_id == "v-race")) == 6


def test_an_upload_is_one_set_of_bytes_at_one_key(engine: Engine, races_spec: DatasetSpec) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    key = "raw/races/f1/data.csv"
    repo.create_upload(engine, dataset, "f1", key, "csv")  # the API's presigned form

    def upload_of(key: str, etag: str, new_id: str) -> str:
        return repo.upload_of_object(engine, dataset, key, etag, "csv", new_id).upload_id

    # The first bytes posted to the form claim it, and the same bytes again are that upload
    assert upload_of(key, "e1", "k-1") == "f1"
    assert upload_of(key, "e1", "k-2") == "f1"
    # Other bytes under its key are another upload, as is an object no form was made for
    assert upload_of(key, "e2", "k-3") == "k-3"
    assert upload_of("raw/races/2024/a.csv", "e1", "k-4") == "k-4"
    (listed, _) = repo.page_uploads(engine, dataset, "raw/races/f1/", None)
    assert [u.upload_id for u in listed] == [
        "f1",
        "k-3",
    ]
    # AND the database holds one upload per key and ETag
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(
            Upload(upload_id="k-5", dataset_id=dataset.id, key=key, file_format="csv", etag="e2")
        )


def test_bytes_racing_for_one_form_claim_it_once(engine: Engine, races_spec: DatasetSpec) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    key = "raw/races/f1/data.csv"
    repo.create_upload(engine, dataset, "f1", key, "csv")
    claimed: dict[str, str] = {}
    errors: list[BaseException] = []
    together = threading.Barrier(6)

    def arrive(etag: str) -> None:
        together.wait()
        try:
            upload = repo.upload_of_object(engine, dataset, key, etag, "csv", f"k-{etag}")
            claimed[etag] = upload.upload_id
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=arrive, args=(f"e{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(claimed.values()).count("f1") == 1 and len(set(claimed.values())) == 6
    assert repo.get_upload(engine, dataset, "f1").etag in claimed


def test_an_unclaimed_key_is_one_record_of_its_newest_bytes(engine: Engine) -> None:
    def kept_as(etag: str, size: int) -> UnclaimedUpload:
        return UnclaimedUpload(
            id="k-u",
            key="raw/later/a.csv",
            unclaimed_key="unclaimed/later/a.csv",
            dataset="later",
            size=size,
            etag=etag,
            reason="no dataset named 'later'",
        )

    first, new = repo.keep_unclaimed(engine, kept_as("e1", 10))
    assert new
    assert repo.keep_unclaimed(engine, kept_as("e1", 10))[1] is False  # the same event again
    newest, new = repo.keep_unclaimed(engine, kept_as("e2", 12))
    assert new and (newest.etag, newest.size) == ("e2", 12)
    (listed,) = repo.list_unclaimed(engine, "later")
    assert (listed.etag, listed.first_seen) == ("e2", first.first_seen)
    assert repo.list_unclaimed(engine, "other") == []
    repo.forget_unclaimed(engine, "k-u")
    with pytest.raises(repo.UnclaimedNotFound):
        repo.get_unclaimed(engine, "k-u")


def test_uploads_stored_before_0006_survive_its_migration_both_ways(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    migrate(engine, "0005", down=True)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO uploads (upload_id, dataset_id, key, file_format, status, etag, "
                "created_at) VALUES ('2024', :dataset, 'raw/races/2024/a.csv', 'csv', "
                "'VALID', 'e1', CURRENT_TIMESTAMP)"
            ),
            {"dataset": dataset.id},
        )
    migrate(engine)
    upload = repo.get_upload(engine, dataset, "2024")
    assert (upload.key, upload.etag, upload.report) == ("raw/races/2024/a.csv", "e1", None)
    assert "unclaimed_uploads" in inspect(engine).get_table_names()


def test_the_database_refuses_a_duplicate_version_and_an_unknown_status(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(DatasetVersion(dataset_id=dataset.id, **version_fields("v-1")))
        session.add(DatasetVersion(dataset_id=dataset.id, **version_fields("v-1")))
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(DatasetVersion(dataset_id=dataset.id, **version_fields("v-2", "MAYBE")))


def test_unknown_dataset_and_upload_are_lookup_errors(
    engine: Engine, races_spec: DatasetSpec
) -> None:
    with pytest.raises(repo.DatasetNotFound):
        repo.get_dataset(engine, "nope")
    dataset, _ = repo.register_dataset(engine, races_spec)
    with pytest.raises(repo.UploadNotFound):
        repo.get_upload(engine, dataset, "nope")


def test_timestamps_come_back_in_utc(engine: Engine, races_spec: DatasetSpec) -> None:
    dataset, _ = repo.register_dataset(engine, races_spec)
    assert repo.get_dataset(engine, dataset.name).created_at.utcoffset() is not None


def test_the_migrate_function_migrates_on_create_and_update_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    from pathlib import Path

    import boto3
    from moto import mock_aws

    from gallop import aws
    from gallop.layout import legacy_alias_key
    from gallop.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("GALLOP_ARTIFACTS_BUCKET", "artifacts")
    monkeypatch.delenv("GALLOP_AWS_ENDPOINT_URL", raising=False)
    get_settings.cache_clear()
    path = Path(__file__).resolve().parents[2] / "functions" / "migrate" / "handler.py"
    spec = importlib.util.spec_from_file_location("migrate_handler", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "migrate", 256, "r1"
        invoked_function_arn = "arn:aws:lambda:us-east-1:1:function:migrate"

    try:
        with engine.begin() as connection:  # back to an empty schema
            for table in (
                "approvals",
                "retraining_policies",
                "traffic_policies",
                "alias_events",
                "live_quality",
                "drift_checks",
                "capture_files",
                "unclaimed_uploads",
                "model_aliases",
                "models",
                "training_runs",
                "feature_sets",
                "uploads",
                "dataset_versions",
                "datasets",
                "alembic_version",
            ):
                connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
            if engine.dialect.name == "postgresql":  # outlives its table's trigger
                connection.execute(text("DROP FUNCTION IF EXISTS alias_events_append_only()"))
        with mock_aws():
            aws.reset_clients()
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket="artifacts")
            legacy = legacy_alias_key("champion")  # an object of the aliases before 0011
            s3.put_object(Bucket="artifacts", Key=legacy, Body=b"{}")
            reply = module.handler({"RequestType": "Delete"}, Context())
            assert reply == {"PhysicalResourceId": "gallop-metadata-schema"}
            assert "datasets" not in inspect(engine).get_table_names()
            module.handler({"RequestType": "Create"}, Context())
            assert {"datasets", "feature_sets"} <= set(inspect(engine).get_table_names())
            # after migrating, the serving objects are written and the old ones gone
            assert "Contents" not in s3.list_objects_v2(Bucket="artifacts", Prefix=legacy)
            module.handler({"RequestType": "Update"}, Context())  # idempotent
    finally:
        aws.reset_clients()
        get_settings.cache_clear()
