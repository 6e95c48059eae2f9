"""Structured logs and CloudWatch metrics (Powertools), one place to configure them."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

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
