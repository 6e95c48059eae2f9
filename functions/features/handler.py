"""features Lambda: a new VALID dataset version → its features, entity snapshot, manifest."""

from __future__ import annotations

from gallop.features.worker import FeaturesWorker
from gallop.observability import sqs_batch_handler
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("features")

handler = sqs_batch_handler("gallop-features", FeaturesWorker)
