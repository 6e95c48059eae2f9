"""What the features function does with each SQS message, with its logs and metrics."""

from __future__ import annotations

import time
from typing import Any

from gallop.features.service import FeaturesRequest, VersionNotValid, build_for_version
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.observability import completed, unretryable
from gallop.settings import get_settings
from gallop.storage import Store


class FeaturesWorker:
    def __init__(self, log: Any, meter: Any) -> None:
        self.log = log
        self.meter = meter
        self._store: Store | None = None

    def handle_message(self, message_id: str, body: str, receive_count: int) -> None:
        del receive_count  # a build that fails settles as FAILED itself, at any attempt
        settings = get_settings()
        self._store = self._store or Store.from_settings(settings)
        request = FeaturesRequest.from_json(body)
        started = time.perf_counter()
        try:
            result = build_for_version(request, self._store, engine_for(settings.sqlalchemy_url))
        except (repo.DatasetNotFound, VersionNotValid) as exc:
            unretryable(self.log, self.meter, exc, message_id=message_id)
            return
        completed(
            self.log,
            self.meter,
            "features",
            counter=f"FeatureSets{result.status.title()}",
            timer="FeatureSeconds",
            seconds=time.perf_counter() - started,
            dataset=request.dataset,
            version_id=request.version_id,
            status=result.status,
            reason=result.reason,
            rows=result.row_count,
        )
