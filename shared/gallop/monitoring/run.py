"""The monitor: for each model that served captured predictions, score them against the
results that have arrived since (live quality), check its inputs and scores for drift
when it has served enough new predictions, store both, publish them as CloudWatch
metrics (EMF) and write the model's monitoring page.

It runs on the monitor function's schedule (EventBridge; `gallop serve`'s timer
locally), when ingest announces a new VALID version (its results), and when a person
asks (`gallop monitor`, which checks drift whatever the count). Each run recomputes the
window's days whole, so running twice, or after a crash, stores the same figures.

Each run also renews (gallop.renewal.renew): a dataset's champion and challenger are
compared (the comparison is on both models' pages), approval requests past their time
expire, the retraining policy's triggers are checked (the schedule only by scheduled
runs), and a "promote" opens an approval request or, with auto_promote, promotes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO

import pandas as pd

from gallop import layout
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.metadata.models import CaptureFile, Dataset, RegisteredModel
from gallop.monitoring.capture import CapturedRows, read_captured
from gallop.monitoring.compare import Comparison
from gallop.monitoring.drift import SCORE, drift_table
from gallop.monitoring.page import publish_monitoring_page
from gallop.monitoring.quality import CannotJoin, LiveQuality, record_live
from gallop.monitoring.reference import NoReference, reference_for
from gallop.monitoring.status import (
    ALARM_METRIC,
    monitoring_status,
    relative_drop,
    window_value,
)
from gallop.observability import emf_line, print_emf
from gallop.renewal.renew import act, compare_and_store
from gallop.serving.registry import ModelNotFound, get_model
from gallop.settings import Settings, get_settings
from gallop.storage import Store
from gallop.training.launchers import Launcher, launcher_for

log = logging.getLogger(__name__)

SERVICE = "gallop-monitor"


@dataclass
class ModelCheck:
    """What one run found for one model."""

    model_id: str
    dataset: str
    rows: int  # captured rows in the window
    new_rows: int  # of them, in capture objects no run had read
    live: list[dict[str, Any]] = field(default_factory=list)  # the window's days
    drift: list[dict[str, Any]] | None = None  # the table, when drift was checked
    drift_skipped: str | None = None  # why it was not
    alarms: list[dict[str, str]] = field(default_factory=list)
    page_key: str | None = None
    problems: list[str] = field(default_factory=list)  # what could not be done, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "dataset": self.dataset,
            "rows": self.rows,
            "new_rows": self.new_rows,
            "live": self.live,
            "drift": self.drift,
            "drift_skipped": self.drift_skipped,
            "alarms": self.alarms,
            "page_key": self.page_key,
            "problems": self.problems,
        }


class Monitor:
    """One run over the models of every dataset, or of one."""

    def __init__(
        self,
        settings: Settings,
        *,
        now: datetime | None = None,
        metrics_out: TextIO | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine_for(settings.sqlalchemy_url)
        self.data = Store.from_settings(settings)
        self.artifacts = Store.artifacts_from_settings(settings)
        self.now = now or datetime.now(UTC)
        self.metrics_out = metrics_out
        self.launcher = launcher
        self.renewals: list[dict[str, Any]] = []  # what the last run's renewal did
        # The results each dataset version had when this run read them, by version id:
        # the comparison and each model's live quality score against the same ones.
        self.results_read: dict[str, pd.DataFrame] = {}

    def run(
        self, dataset: str | None = None, *, force: bool = False, scheduled: bool = False
    ) -> list[ModelCheck]:
        """force: check drift whatever the count of new predictions (a person asked);
        scheduled: a run of the schedule (retraining schedules are checked). A model
        (or a dataset's renewal) that cannot be checked is reported in its problems,
        and the others are checked all the same."""
        datasets = self._datasets(dataset)
        self.renewals = []
        self.results_read = {}  # a run reads a version's results once; the next, anew
        comparisons: dict[str, Comparison] = {}
        for each in datasets:
            try:
                compared = compare_and_store(
                    self.engine,
                    self.data,
                    self.artifacts,
                    self.settings,
                    each,
                    self.now,
                    self.results_read,
                )
            except Exception as exc:  # one dataset's fault must not stop the others
                self._renewal_failed(each, exc)
                continue
            if compared is not None:
                comparisons[each.name] = compared
        checks = []
        for name, model_id in captured_models(self.data, dataset):
            try:
                checks.append(
                    self.check(name, model_id, force=force, compared=comparisons.get(name))
                )
            except Exception as exc:  # one model's fault must not stop the others' checks
                log.exception("the monitor could not check %s", model_id)
                failed = ModelCheck(model_id, name, 0, 0, problems=[f"{type(exc).__name__}: {exc}"])
                checks.append(failed)
        for each in datasets:  # after live quality: the alarms the triggers watch are fresh
            try:
                done = act(
                    self.engine,
                    self.artifacts,
                    self.settings,
                    each,
                    comparisons.get(each.name),
                    self._launcher(),
                    now=self.now,
                    scheduled=scheduled,
                )
            except Exception as exc:
                self._renewal_failed(each, exc)
                continue
            self.renewals.append(done)
        return checks

    def _datasets(self, name: str | None) -> list[Dataset]:
        if name is None:
            return repo.list_datasets(self.engine)
        try:
            return [repo.get_dataset(self.engine, name)]
        except repo.DatasetNotFound:
            return []

    def _renewal_failed(self, dataset: Dataset, exc: Exception) -> None:
        log.exception("the monitor could not renew dataset %s", dataset.name)
        problem = f"{type(exc).__name__}: {exc}"
        self.renewals.append({"dataset": dataset.name, "problems": [problem]})

    def _launcher(self) -> Launcher:
        """The training launcher retrains go through: the API's kind; one per process."""
        if self.launcher is None:
            key = (self.settings.training_launcher, self.settings.sqlalchemy_url)
            if key not in _LAUNCHERS:
                _LAUNCHERS[key] = launcher_for(
                    self.settings, self.engine, self.data, self.artifacts
                )
            self.launcher = _LAUNCHERS[key]
        return self.launcher

    @property
    def first_day(self) -> date:
        return self.now.date() - timedelta(days=self.settings.monitor_window_days - 1)

    def check(
        self,
        dataset: str,
        model_id: str,
        *,
        force: bool = False,
        compared: Comparison | None = None,
    ) -> ModelCheck:
        try:
            model = get_model(self.engine, model_id)
        except ModelNotFound:
            log.warning("captured rows of %s, which is not a registered model", model_id)
            return ModelCheck(model_id, dataset, 0, 0, problems=["not a registered model"])
        captured = read_captured(self.data, dataset, model_id, self.first_day.isoformat())
        check = ModelCheck(model_id, dataset, len(captured), self._read_new(model, captured))
        quality = self._live_quality(model, captured, check)
        self._drift(model, captured, check, force)
        check.page_key = publish_monitoring_page(
            self.engine,
            self.artifacts,
            model,
            quality.calibration if quality is not None else None,
            self.settings,
            compared if compared and model_id in (compared.champion, compared.challenger) else None,
        )
        status = monitoring_status(
            self.engine,
            model,
            self.settings.monitor_window_days,
            self.settings.quality_margin,
            today=self.now.date(),
        )
        check.live = [d for d in status["live"] if d["day"] >= self.first_day.isoformat()]
        check.alarms = status["alarms"]
        self._emit(model, check, status)
        return check

    def _read_new(self, model: RegisteredModel, captured: CapturedRows) -> int:
        """Mark the window's capture objects read; rows in those no run had read."""
        unread = set(repo.unread_capture_keys(self.engine, captured.keys))
        files = [
            CaptureFile(
                key=key,
                dataset=model.manifest.get("dataset") or "_",
                model_id=model.model_id,
                rows=rows,
                read_at=self.now,
            )
            for key, rows in captured.rows_per_key.items()
            if key in unread
        ]
        repo.record_capture_files(self.engine, files)
        return sum(f.rows for f in files)

    def _live_quality(
        self, model: RegisteredModel, captured: CapturedRows, check: ModelCheck
    ) -> LiveQuality | None:
        """The window's days scored against the dataset's newest VALID version, stored."""
        if not len(captured):
            return None
        try:
            since = self.first_day.isoformat()
            return record_live(self.engine, self.data, model, captured, since, self.results_read)
        except CannotJoin as exc:
            check.problems.append(str(exc))
            return None

    def _drift(
        self, model: RegisteredModel, captured: CapturedRows, check: ModelCheck, force: bool
    ) -> None:
        due = self.settings.monitor_min_predictions
        latest = repo.latest_drift_check(self.engine, model.model_id)
        since = latest.checked_at if latest is not None else None
        served = repo.captured_rows_read(self.engine, model.model_id, since)
        if not len(captured):
            check.drift_skipped = "no captured rows in the window"
            return
        fewest = self.settings.drift_min_rows
        if len(captured) < fewest:
            check.drift_skipped = (
                f"{len(captured)} captured rows in the window: a drift check needs "
                f"{fewest:,} (drift_min_rows), or it measures the sample's noise"
            )
            return
        if not force and served < due:
            check.drift_skipped = f"{served} predictions since the last check, {due} make one due"
            return
        try:
            reference = reference_for(model, self.data, self.artifacts)
        except NoReference as exc:
            check.drift_skipped = f"no training reference: {exc}"
            return
        table = drift_table(reference, captured, self.settings)
        repo.record_drift_check(
            self.engine,
            model.model_id,
            len(captured),
            table,
            window_start=_utc(captured.at[0]),
            window_end=_utc(captured.at[-1]),
            checked_at=self.now,
        )
        check.drift = table

    def _emit(self, model: RegisteredModel, check: ModelCheck, status: dict[str, Any]) -> None:
        """EMF metrics per dataset and model (and per service, what the alarms watch)."""
        values: dict[str, float] = {"CapturedRowsRead": float(check.new_rows)}
        # The latest check's drift on every run, not only on runs that check: the alarm
        # (missing data is not breaching) stays in ALARM as long as the API and page do.
        latest = status.get("drift")
        table = check.drift if check.drift is not None else (latest or {}).get("features")
        if table:
            features = [r for r in table if r["feature"] != SCORE]
            values["DriftedFeatures"] = float(sum(bool(r["flagged"]) for r in features))
            psis = [r["psi"] for r in features if r["psi"] is not None]
            values["MaxFeaturePSI"] = max(psis, default=0.0)
            score = next((r for r in table if r["feature"] == SCORE), None)
            if score is not None and score["psi"] is not None:
                values["ScorePSI"] = float(score["psi"])
        metric = ALARM_METRIC.get(model.task)
        trained = (status.get("training") or {}).get(metric) if metric else None
        window = _window_values(check.live)
        for name, value in window.items():
            values[f"Live{_metric_name(name)}"] = value
        if metric and trained is not None and metric in window:
            drop = relative_drop(metric, window[metric], trained)
            if math.isfinite(drop):
                values["LiveQualityDrop"] = drop
        dims = {"dataset": check.dataset, "model": model.model_id}
        finite = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        # Counts and figures alike unitless: a PSI or a log loss is no count.
        print_emf(emf_line(SERVICE, finite, dims, unit="None"), self.metrics_out)
        for row in check.drift or []:  # drift per feature (and the score's), for graphs
            if row["psi"] is not None and math.isfinite(row["psi"]):
                feature = dims | {"feature": row["feature"]}
                line = emf_line(SERVICE, {"FeaturePSI": row["psi"]}, feature, unit="None")
                print_emf(line, self.metrics_out)


_LAUNCHERS: dict[tuple[str, str], Launcher] = {}


def monitor(
    settings: Settings, dataset: str | None = None, *, force: bool = False, scheduled: bool = False
) -> list[ModelCheck]:
    """One monitor run (see the module's docstring)."""
    return Monitor(settings).run(dataset, force=force, scheduled=scheduled)


def captured_models(store: Store, dataset: str | None = None) -> Iterator[tuple[str, str]]:
    """(dataset, model id) of every model with captured rows, from the capture layout's
    folders (not its objects: there are thousands a model)."""
    root = layout.CAPTURE_ROOT
    datasets = [f"{root}{dataset}/"] if dataset else store.list_folders(root)
    for folder in datasets:
        for model in store.list_folders(folder):
            yield folder[len(root) :].strip("/"), model[len(folder) :].strip("/")


def _window_values(live: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric over the window's days, weighted by the races (rows) of each day."""
    names = {name for day in live for name in day.get("metrics") or {}}
    days = live[0]["day"] if live else ""
    values = {
        name: window_value([(d["day"], d["groups"], d["metrics"].get(name)) for d in live], days)
        for name in names
    }
    return {name: value for name, value in values.items() if math.isfinite(value)}


def _utc(at: Any) -> datetime:
    """A captured row's time (numpy datetime64, UTC) as an aware datetime."""
    return datetime.fromisoformat(str(at.astype("datetime64[us]"))).replace(tzinfo=UTC)


def _metric_name(metric: str) -> str:
    """ndcg@4 -> NDCG4, race_log_loss -> RaceLogLoss: a CloudWatch metric name."""
    words = metric.replace("@", "_").split("_")
    return "".join(
        w.upper() if w in {"ndcg", "auc", "ece", "rmse", "roi"} else w.title() for w in words
    )


def flagged_features(table: list[dict[str, Any]]) -> list[str]:
    return [r["feature"] for r in table if r.get("flagged") and r["feature"] != SCORE]


class MonitorWorker:
    """The monitor function's queue messages: ingest announces each new VALID version
    ({"dataset", "version_id"}); its results may score captured rows of that dataset."""

    def __init__(self, log: Any, meter: Any) -> None:
        self.log = log
        self.meter = meter

    def handle_message(self, message_id: str, body: str, receive_count: int) -> None:
        del receive_count  # a run stores whole days: a repeat stores the same figures
        dataset = str(json.loads(body)["dataset"])
        checks = monitor(get_settings(), dataset)
        self.log.info(
            "results arrived",
            extra={"dataset": dataset, "models": len(checks), "message_id": message_id},
        )


def scheduled_or_asked(settings: Settings, event: dict[str, Any]) -> dict[str, Any]:
    """The monitor function's other events: its EventBridge schedule (every dataset,
    drift when due), or the API asking for a check now ({"dataset": ..., "force": true})."""
    asked = event.get("source") != "aws.events"
    dataset = event.get("dataset") if asked else None
    run = Monitor(settings)
    checks = run.run(dataset, force=bool(event.get("force")) and asked, scheduled=not asked)
    return {"checks": [check.to_dict() for check in checks], "renewals": run.renewals}
