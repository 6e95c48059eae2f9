"""Captured predictions survive a restart of the local stack. In a file of its own: each
local stack starts moto afresh (its backends are the process's), so no other stack may
be up in this process meanwhile (the module-scoped one of test_capture.py would be)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gallop import aws
from gallop.layout import capture_prefix
from gallop.local.stack import LocalStack
from gallop.settings import Settings
from gallop.storage import Store


def test_capture_lands_on_the_disk_mirror_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firehose writes to moto's S3 in-process, past the local S3's front: the local
    firehose keeps those objects on disk too."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    state = tmp_path / "state"
    # WHEN the local Firehose delivers a record, and one it cannot partition
    with LocalStack(state, quiet=True) as local:
        assert local.settings is not None
        settings: Settings = local.settings
        firehose = aws.client("firehose", settings)
        record = {"dataset": "d", "model_id": "m-0123456789abcdef", "row": 0}
        firehose.put_record_batch(
            DeliveryStreamName=settings.capture_stream,
            Records=[{"Data": json.dumps(record).encode() + b"\n"}, {"Data": b"not json\n"}],
        )
        bucket = state / "s3" / settings.data_bucket
        kept = [p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()]
    # THEN the record is on disk under its dataset, model and day; the other an error
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    partitioned = capture_prefix("d", "m-0123456789abcdef", today) + "gallop-capture-1-"
    errors = f"capture-errors/partitioning-failed/date={today}/gallop-capture-1-"
    assert len(kept) == 2
    captured = next(k for k in kept if k.startswith(partitioned))
    assert any(k.startswith(errors) for k in kept)
    # AND a restart restores it
    with LocalStack(state, quiet=True) as again:
        assert again.settings is not None
        store = Store.from_settings(again.settings)
        assert [json.loads(line) for line in store.get_bytes(captured).splitlines()] == [record]
