"""What the ingest function does with each SQS message, with its logs and metrics."""

from __future__ import annotations

import time
from typing import Any

from gallop import aws
from gallop.features.service import FeaturesRequest
from gallop.ingest.events import objects_created
from gallop.ingest.service import UnknownDataset, ingest_object
from gallop.metadata.db import engine_for
from gallop.observability import completed, unretryable
from gallop.settings import RAW_PREFIX, get_settings
from gallop.storage import NotAnUploadKey, ObjectMissing, Store


class IngestWorker:
    """Holds the clients a warm Lambda container reuses; built lazily on first message."""

    def __init__(self, log: Any, meter: Any) -> None:
        self.log = log
        self.meter = meter
        self._store: Store | None = None

    def handle_message(self, message_id: str, body: str) -> None:
        settings = get_settings()
        if self._store is None:
            self._store = Store.from_settings(settings)
        engine = engine_for(settings.sqlalchemy_url)
        for created in objects_created(body):
            if created.bucket != settings.data_bucket or not created.key.startswith(RAW_PREFIX):
                self.log.warning(
                    "ignored object outside raw/",
                    extra={"key": created.key, "bucket": created.bucket},
                )
                continue
            started = time.perf_counter()
            try:
                outcome = ingest_object(created.key, self._store, engine, settings)
            except (UnknownDataset, NotAnUploadKey, ObjectMissing) as exc:
                # The object (if any) stays in raw/ for an operator.
                unretryable(self.log, self.meter, exc, key=created.key, message_id=message_id)
                continue
            completed(
                self.log,
                self.meter,
                "ingested",
                counter=f"Versions{outcome.status.title()}",
                timer="IngestSeconds",
                seconds=time.perf_counter() - started,
                key=created.key,
                status=outcome.status,
                version_id=outcome.version_id,
                new=outcome.created,
            )
            if outcome.status == "VALID":
                self._announce(outcome.dataset, outcome.version_id, settings)

    def _announce(self, dataset: str, version_id: str | None, settings: Any) -> None:
        """Tell the features function. Also for a repeat: if an earlier announcement was
        lost, this one makes up for it, and the features step is idempotent."""
        if not settings.features_queue_url or version_id is None:
            return
        request = FeaturesRequest(dataset, version_id)
        aws.client("sqs", settings).send_message(
            QueueUrl=settings.features_queue_url, MessageBody=request.to_json()
        )
