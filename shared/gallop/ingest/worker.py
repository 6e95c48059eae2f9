"""What the ingest function does with each SQS message, with its logs and metrics."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeout

from gallop import aws
from gallop.features.service import FeaturesRequest
from gallop.ingest import unclaimed
from gallop.ingest.events import objects_created
from gallop.ingest.service import UnknownDataset, ingest_object, reject_unprocessable
from gallop.layout import RAW_PREFIX, NotAnUploadKey
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.observability import completed, gave_up, unretryable
from gallop.settings import MAX_RECEIVE_COUNT, get_settings
from gallop.storage import ObjectMissing, Store


class IngestWorker:
    """Holds the clients a warm Lambda container reuses; built lazily on first message."""

    def __init__(self, log: Any, meter: Any) -> None:
        self.log = log
        self.meter = meter
        self._store: Store | None = None

    def handle_message(self, message_id: str, body: str, receive_count: int) -> None:
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
            except UnknownDataset as exc:
                self._keep_unclaimed(created.key, str(exc), exc.dataset, engine, message_id)
                continue
            except NotAnUploadKey as exc:
                self._keep_unclaimed(created.key, str(exc), None, engine, message_id)
                continue
            except ObjectMissing as exc:
                unretryable(self.log, self.meter, exc, key=created.key, message_id=message_id)
                continue
            except Exception as exc:
                if transient(exc) or receive_count < MAX_RECEIVE_COUNT:
                    raise  # SQS delivers it again
                # Every delivery failed, for a reason that is not passing: answer the upload
                # rather than leave it PENDING (and re-driven at every start of a local stack).
                gave_up(self.log, self.meter, exc, key=created.key, message_id=message_id)
                reason = f"{type(exc).__name__} at attempt {receive_count} of {MAX_RECEIVE_COUNT}"
                outcome = reject_unprocessable(created.key, self._store, engine, settings, reason)
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

    def _keep_unclaimed(
        self, key: str, reason: str, dataset: str | None, engine: Any, message_id: str
    ) -> None:
        """No dataset claims the object: keep it under unclaimed/ and tell a person (the
        metric has an alarm); a dataset registered later claims it."""
        assert self._store is not None
        try:
            record, new = unclaimed.keep(self._store, engine, key, reason, dataset)
        except ObjectMissing as missing:
            unretryable(self.log, self.meter, missing, key=key, message_id=message_id)
            return
        self.log.warning(
            f"kept as unclaimed: {reason}",
            extra={"key": key, "unclaimed_key": record.unclaimed_key, "new": new},
        )
        if new:
            self.meter.add_metric(name="UnclaimedUploads", unit=MetricUnit.Count, value=1)

    def _announce(self, dataset: str, version_id: str | None, settings: Any) -> None:
        """Tell the features function, and the monitor (the version's results score the
        predictions captured before them). Also for a repeat: if an earlier announcement
        was lost, this one makes up for it, and both steps are idempotent."""
        if version_id is None:
            return
        body = FeaturesRequest(dataset, version_id).to_json()
        for queue in (settings.features_queue_url, settings.monitor_queue_url):
            if queue:
                aws.client("sqs", settings).send_message(QueueUrl=queue, MessageBody=body)


def transient(exc: BaseException) -> bool:
    """A failure of what ingest depends on (S3, the database, the network), which a later
    attempt may not meet: retried, never turned into a rejection."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response["Error"].get("Code") in THROTTLED
    if isinstance(exc, repo.ParentMoved):  # built again on the newest version
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(
        exc, BotoConnectionError | HTTPClientError | ConnectionError | TimeoutError | SATimeout
    )


THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestLimitExceeded"}
)
