"""Structured logs and CloudWatch metrics (Powertools), one place to configure them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

NAMESPACE = "gallop"


def logger(service: str) -> Logger:
    return Logger(service=service, level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))


def metrics(service: str) -> Metrics:
    # Metrics leave as EMF lines on stdout, which CloudWatch turns into metrics.
    return Metrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE), service=service
    )


def discard_unpublished(meter: Metrics) -> None:
    """Drop metrics that will not be published. With POWERTOOLS_METRICS_DISABLED set,
    Powertools skips the flush and also never clears its (process-wide) metric set, so a
    long-running local process would grow it forever."""
    if is_metrics_disabled():
        meter.clear_metrics()


def unretryable(log: Logger, meter: Metrics, exc: Exception, **context: object) -> None:
    """A message that retrying cannot help: say why, count it, and let it go."""
    problem = type(exc).__name__
    log.error(f"{problem}: {exc}", extra=context)
    meter.add_metric(name=problem, unit=MetricUnit.Count, value=1)


def gave_up(log: Logger, meter: Metrics, exc: Exception, **context: object) -> None:
    """A message that failed at every delivery, for a reason not understood: the traceback
    for whoever mends it, and a count (InternalErrors) to alarm on."""
    log.error(f"failed at every attempt: {type(exc).__name__}: {exc}", exc_info=exc, extra=context)
    meter.add_metric(name="InternalErrors", unit=MetricUnit.Count, value=1)


def completed(
    log: Logger,
    meter: Metrics,
    message: str,
    *,
    counter: str,
    timer: str,
    seconds: float,
    **context: object,
) -> None:
    """A message handled: one log line, one count (`counter`) and its duration (`timer`)."""
    log.info(message, extra={**context, "seconds": round(seconds, 3)})
    meter.add_metric(name=counter, unit=MetricUnit.Count, value=1)
    meter.add_metric(name=timer, unit=MetricUnit.Seconds, value=seconds)


def sqs_batch_handler(service: str, make_worker: Callable[[Logger, Metrics], Any]) -> Callable:
    """The Lambda handler of a queue-driven function: Powertools batch processing with
    partial failures (a record that raises is retried, the others are not), JSON logs
    keyed by the first message id, and metrics published per invocation. Workers are told
    how many times SQS has delivered the message (dead-lettered after MAX_RECEIVE_COUNT)."""
    log, meter = logger(service), metrics(service)
    processor = BatchProcessor(event_type=EventType.SQS)
    worker = make_worker(log, meter)
    # A batch of only s3:TestEvent publishes no metric; that is expected, not a fault.
    warnings.filterwarnings("ignore", message="No application metrics to publish")

    def record_handler(record: SQSRecord) -> None:
        receive_count = int(record.attributes.approximate_receive_count or 1)
        worker.handle_message(record.message_id, record.body, receive_count)

    @log.inject_lambda_context(correlation_id_path="Records[0].messageId", clear_state=True)
    @meter.log_metrics
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        try:
            return dict(
                process_partial_response(
                    event=event, record_handler=record_handler, processor=processor, context=context
                )
            )
        finally:
            discard_unpublished(meter)

    return handler
