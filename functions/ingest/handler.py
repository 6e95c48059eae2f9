"""ingest Lambda: SQS batches of S3 ObjectCreated events → validated dataset versions.

A record whose processing raises is reported in batchItemFailures and retried by SQS
(then dead-lettered); the others in the batch are not redone.
"""

from __future__ import annotations

import warnings
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from gallop.ingest.worker import IngestWorker
from gallop.observability import discard_unpublished, logger, metrics
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("ingest")

log = logger("gallop-ingest")
meter = metrics("gallop-ingest")
processor = BatchProcessor(event_type=EventType.SQS)
worker = IngestWorker(log, meter)
# A batch of only s3:TestEvent messages publishes no metric; that is expected, not a fault.
warnings.filterwarnings("ignore", message="No application metrics to publish")


def record_handler(record: SQSRecord) -> None:
    worker.handle_message(record.message_id, record.body)


@log.inject_lambda_context(correlation_id_path="Records[0].messageId", clear_state=True)
@meter.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        discard_unpublished(meter)
