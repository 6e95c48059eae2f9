"""A test-only crash hook: with GALLOP_TEST_CRASH_AT=<point> in its environment, the
process ends at that point as kill -9 would end it (os._exit, nothing flushed, nothing
cleaned up), so that tests can check what a crash leaves behind. Unset, it does nothing."""

from __future__ import annotations

import os

ENV_TEST_CRASH_AT = "GALLOP_TEST_CRASH_AT"
READING_UPLOAD = "reading-upload"  # ingest: where a file past every limit would end it
VERSION_RECORDED = "version-recorded"  # ingest: the VALID version's row has committed
MODEL_REGISTERED = "model-registered"  # training: the model's row has committed


def crash_point(point: str) -> None:
    if os.environ.get(ENV_TEST_CRASH_AT) == point:
        os._exit(137)
