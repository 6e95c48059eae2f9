"""ingest Lambda: SQS batches of S3 ObjectCreated events → validated dataset versions.

A record whose processing raises is reported in batchItemFailures and retried by SQS
(then dead-lettered); the others in the batch are not redone.
"""

from __future__ import annotations

from gallop.ingest.worker import IngestWorker
from gallop.observability import sqs_batch_handler
from gallop.settings import get_settings

# A function deployed without its configuration fails at cold start, naming what is missing.
get_settings().require_for("ingest")

handler = sqs_batch_handler("gallop-ingest", IngestWorker)
