"""The local S3 refuses what S3 refuses: a presigned upload form writes its one key, in
its size range, until it expires, and nothing else; unsigned or badly signed requests
are refused. Alias and model objects that do not parse answer 404/409, never 500."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest

from gallop import aws
from gallop.client import ApiError, GallopClient
from gallop.local import s3_front
from gallop.local.stack import LocalStack
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store
from gallop.training import runs
from gallop.training.artifacts import publish
from gallop.training.config import run_config
from tests.conftest import spec_named, unique_name


def _post(
    form: dict[str, Any], body: bytes, url: str | None = None, **fields: str
) -> httpx.Response:
    return httpx.post(
        url or form["url"],
        data={**form["fields"], **fields},
        files={"file": ("data.csv", body)},
        timeout=30,
    )


def _error_code(reply: httpx.Response) -> str:
    return reply.text.split("<Code>")[1].split("</Code>")[0]


@pytest.fixture()
def form(client: GallopClient, races_spec: DatasetSpec) -> dict[str, Any]:
    spec = spec_named(races_spec, unique_name("s3"))
    client.register_dataset(spec)
    return client.create_upload(spec.name, "csv")


def test_an_upload_wakes_ingest_only_once_its_object_is_on_disk(
    stack: LocalStack, form: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ingest, woken by the notification, may end the process (a file past every limit):
    # the start after it must find the object to answer the upload.
    on_disk_when_sent: list[bool] = []
    send = s3_front._send_event

    def record(account_id: str, event_name: Any, bucket: Any, key: Any) -> None:
        on_disk_when_sent.append((stack.state_dir / "s3" / bucket.name / key.name).is_file())
        send(account_id, event_name, bucket, key)

    monkeypatch.setattr(s3_front, "_send_event", record)
    reply = _post(form, b"race_id,horse_id\n1,2\n")
    assert reply.status_code < 300, reply.text
    assert on_disk_when_sent == [True]


@pytest.mark.parametrize(
    ("bucket", "key"),
    [("data", "curated/races/v-1/data.parquet"), ("artifacts", "aliases/champion.json")],
)
def test_an_upload_form_writes_no_other_key(
    stack: LocalStack, form: dict[str, Any], bucket: str, key: str
) -> None:
    assert stack.settings is not None
    name = stack.settings.data_bucket if bucket == "data" else stack.settings.artifacts_bucket
    url = form["url"].rsplit("/", 1)[0] + f"/{name}"
    reply = _post(form, b'{"model_id": "m-evil"}', url=url, key=key)
    assert reply.status_code == 403 and _error_code(reply) == "AccessDenied"
    assert "Policy Condition failed" in reply.text
    with pytest.raises(ObjectMissing):
        Store(name, aws.client("s3", stack.settings)).head(key)


def test_a_tampered_oversized_or_expired_form_is_refused_and_the_real_one_works(
    stack: LocalStack, form: dict[str, Any]
) -> None:
    assert stack.settings is not None
    store = Store.from_settings(stack.settings)
    # an edited policy (a wider size range) no longer matches its signature
    policy = json.loads(base64.b64decode(form["fields"]["policy"]))
    policy["conditions"] = [
        ["content-length-range", 1, 10**12] if isinstance(c, list) else c
        for c in policy["conditions"]
    ]
    edited = base64.b64encode(json.dumps(policy).encode()).decode()
    reply = _post(form, b"a,b\n1,2\n", policy=edited)
    assert reply.status_code == 403 and _error_code(reply) == "SignatureDoesNotMatch"
    # a body over the form's size limit
    reply = _post(form, b"x" * (stack.settings.max_upload_bytes + 1))
    assert reply.status_code == 400 and _error_code(reply) == "EntityTooLarge"
    # an extra field the policy does not name
    reply = _post(form, b"a,b\n1,2\n", **{"Content-Type": "text/html"})
    assert reply.status_code == 403 and "Extra input fields" in reply.text
    # an expired form, signed as the API signs them
    expired = store.presigned_post(form["key"], 100, expires_in=-1)
    reply = _post(expired, b"a,b\n1,2\n")
    assert reply.status_code == 403 and "Policy expired" in reply.text
    with pytest.raises(ObjectMissing):
        store.head(form["key"])

    # the untampered form still uploads
    assert _post(form, b"a,b\n1,2\n").status_code == 204
    assert store.get_bytes(form["key"]) == b"a,b\n1,2\n"


def test_unsigned_and_wrongly_signed_requests_are_refused(stack: LocalStack) -> None:
    assert stack.settings is not None
    store = Store.from_settings(stack.settings)
    store.put_bytes("probe/signed.txt", b"kept", "text/plain")
    url = f"{stack.settings.aws_endpoint_url}/{stack.settings.data_bucket}/probe/signed.txt"
    assert httpx.put(url, content=b"overwritten").status_code == 403
    assert httpx.delete(url).status_code == 403
    assert httpx.get(url).status_code == 403
    # a presigned link reads its own object only, until it expires
    link = store.presigned_get("probe/signed.txt", 60)
    assert httpx.get(link).content == b"kept"
    assert httpx.get(link.replace("signed.txt", "other.txt")).status_code == 403
    short = store.presigned_get("probe/signed.txt", 1)
    time.sleep(1.1)
    expired = httpx.get(short)
    assert expired.status_code == 403 and "Request has expired" in expired.text
    assert store.get_bytes("probe/signed.txt") == b"kept"


def test_a_model_whose_files_do_not_load_answers_409_and_cannot_be_promoted_once_gone(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    # GIVEN a registered model whose manifest lacks what serving needs, and junk for ONNX
    assert stack.settings is not None
    engine = engine_for(stack.settings.sqlalchemy_url)
    dataset, _ = repo.register_dataset(engine, spec_named(races_spec, unique_name("junk")))
    run_id = unique_name("").replace("-", "") * 4
    runs.start_run(
        engine,
        run_id=run_id,
        dataset_id=dataset.id,
        version_id="v-1",
        spec_hash=dataset.spec_hash,
        code_version="c0de",
        config=run_config(dataset.name, "ranking", None, {}, 0.2),
    )
    artifacts = Store.artifacts_from_settings(stack.settings)
    files = {
        "manifest.json": json.dumps({"run_id": run_id, "task": "ranking"}).encode(),
        "model.onnx": b"not onnx",
        "report.html": b"<html></html>",
    }
    prefix = publish(artifacts, run_id, files, b"tarball")
    model = runs.register_model(engine, artifacts, run_id, prefix)

    # THEN predicting with it is a 409 that says so
    with pytest.raises(ApiError) as refused:
        client.predict(model.model_id, rows=[{"x": 1.0}])
    assert refused.value.status_code == 409 and "cannot be loaded" in str(refused.value)

    # WHEN its ONNX file is gone THEN promoting it is a 409, and no alias names it
    artifacts.delete(model.onnx_key)
    with pytest.raises(ApiError) as refused:
        client.promote(model.model_id, "challenger")
    assert refused.value.status_code == 409 and model.onnx_key in str(refused.value)
