"""Structured logs and CloudWatch metrics (Powertools), one place to configure them."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics

NAMESPACE = "gallop"


def logger(service: str) -> Logger:
    return Logger(service=service, level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))


def metrics(service: str) -> Metrics:
    # Metrics leave as EMF lines on stdout, which CloudWatch turns into metrics.
    return Metrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE), service=service
    )
