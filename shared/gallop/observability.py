"""Structured logs and CloudWatch metrics (Powertools), one place to configure them; and
a bare EMF line for the predict path, which does not import Powertools (it would add to
every cold start what a few counters do not need).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported where used: the predict path never loads Powertools
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.typing import LambdaContext

NAMESPACE = "gallop"


def logger(service: str) -> Logger:
    from aws_lambda_powertools import Logger

    return Logger(service=service, level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))


def metrics(service: str) -> Metrics:
    from aws_lambda_powertools import Metrics

    # Metrics leave as EMF lines on stdout, which CloudWatch turns into metrics.
    return Metrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE), service=service
    )


def discard_unpublished(meter: Metrics) -> None:
    """Drop metrics that will not be published. With POWERTOOLS_METRICS_DISABLED set,
    Powertools skips the flush and also never clears its (process-wide) metric set, so a
    long-running local process would grow it forever."""
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if is_metrics_disabled():
        meter.clear_metrics()


def unretryable(log: Logger, meter: Metrics, exc: Exception, **context: object) -> None:
    """A message that retrying cannot help: say why, count it, and let it go."""
    from aws_lambda_powertools.metrics import MetricUnit

    problem = type(exc).__name__
    log.error(f"{problem}: {exc}", extra=context)
    meter.add_metric(name=problem, unit=MetricUnit.Count, value=1)


def gave_up(log: Logger, meter: Metrics, exc: Exception, **context: object) -> None:
    """A message that failed at every delivery, for a reason not understood: the traceback
    for whoever mends it, and a count (InternalErrors) to alarm on."""
    from aws_lambda_powertools.metrics import MetricUnit

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
    from aws_lambda_powertools.metrics import MetricUnit

    log.info(message, extra={**context, "seconds": round(seconds, 3)})
    meter.add_metric(name=counter, unit=MetricUnit.Count, value=1)
    meter.add_metric(name=timer, unit=MetricUnit.Seconds, value=seconds)


def sqs_batch_handler(service: str, make_worker: Callable[[Logger, Metrics], Any]) -> Callable:
    """The Lambda handler of a queue-driven function: Powertools batch processing with
    partial failures (a record that raises is retried, the others are not), JSON logs
    keyed by the first message id, and metrics published per invocation. Workers are told
    how many times SQS has delivered the message (dead-lettered after MAX_RECEIVE_COUNT)."""
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

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


def emf_line(
    service: str,
    values: Mapping[str, float],
    dimensions: Mapping[str, str] | None = None,
    *,
    unit: str = "Count",
    at: float | None = None,
) -> str:
    """One CloudWatch Embedded Metric Format line: `values` in namespace gallop, under the
    dimension set [service] and, when `dimensions` are given (e.g. dataset and model),
    [service, *dimensions] too. CloudWatch turns such a line on stdout into metrics."""
    extra = dict(dimensions or {})
    sets = [["service"]] + ([["service", *extra]] if extra else [])
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int((time.time() if at is None else at) * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": sets,
                    "Metrics": [{"Name": name, "Unit": unit} for name in values],
                }
            ],
        },
        "service": service,
        **extra,
        **values,
    }
    return json.dumps(record, separators=(",", ":"))


def print_emf(line: str, out: TextIO | None = None) -> None:
    """Print an EMF line whole (one write), to `out`; else to stdout, unless metrics are
    turned off as Powertools' are (POWERTOOLS_METRICS_DISABLED: a quiet local stack)."""
    disabled = os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true")
    if out is None and disabled:
        return
    stream = out or sys.stdout
    stream.write(line + "\n")
    stream.flush()
