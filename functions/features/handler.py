"""features Lambda: a new VALID dataset version → its features, entity snapshot, manifest."""

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

from gallop.features.worker import FeaturesWorker
from gallop.observability import discard_unpublished, logger, metrics
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("features")

log = logger("gallop-features")
meter = metrics("gallop-features")
processor = BatchProcessor(event_type=EventType.SQS)
worker = FeaturesWorker(log, meter)
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
