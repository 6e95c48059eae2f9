"""Prediction capture: what the predict path served, as JSON Lines through Firehose.

The reply path only queues references (`Capture.capture`: the model, the request's rows or
its completed feature matrix, the reply's predictions), on a bounded queue, without
serialising anything or calling AWS. A daemon thread turns them into records, one per
served row (the format in `record`), and sends them with Firehose's PutRecordBatch; the
delivery stream writes them under `capture/{dataset}/{model}/date=YYYY-MM-DD/`
(gallop.layout.CAPTURE_PREFIX, dynamic partitioning). A failure (the endpoint unreachable,
the stream gone, throttling) never reaches a request: it is logged and counted, as EMF
metrics (namespace gallop, service gallop-predict): CapturedRows (delivered),
CaptureFailures (rows not delivered) and CaptureDropped (rows dropped because the queue
was full: capture never makes a request wait).

Shadow scoring rides the same queue and thread (`Capture.shadow`): the reply path queues
a job that scores the rows with the model that did not answer, and the sender runs it
and captures its rows with `"shadow": true`. So no capture stream means no shadow, a
shadow never delays or fails a reply, and its rows are counted as the model's:
ShadowDropped (the queue was full) and ShadowFailures (the model could not score them),
on the EMF line only when not zero.

On Lambda the container is frozen between invocations, its threads with it: rows queued
when a reply left are sent when the container next runs (the thread carries on where it
stopped), and rows still queued when a container is retired are lost (counted nowhere:
the container is gone). Each `capture` call checks the sender is alive (a frozen-and-thawed
or forked process may have lost it) and starts one if not; it never sends itself, which
would put Firehose's latency on the reply path.

`read_captured` reads a model's captured rows back as arrays, for drift and live quality.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import numpy as np
import orjson

from gallop.layout import capture_prefix
from gallop.observability import emf_line, print_emf
from gallop.serving.predict import feature_matrix, id_text

if TYPE_CHECKING:
    from gallop.serving.model import LoadedModel
    from gallop.settings import Settings
    from gallop.storage import Store

log = logging.getLogger(__name__)

RECORD_VERSION = 1
NO_DATASET = "_"  # the dataset partition of a model trained without one
SERVICE = "gallop-predict"
MAX_BATCH_RECORDS = 500  # Firehose PutRecordBatch: records per call
MAX_BATCH_BYTES = 4 * 1024 * 1024  # and bytes per call
MAX_RECORD_BYTES = 1000 * 1024  # and bytes per record
MAX_QUEUED_REQUESTS = 1024  # requests waiting for the sender; past it rows are dropped
MAX_ROWS_PER_SEND = 5000  # rows the sender turns into records before it sends
LINGER_SECONDS = 0.05  # how long the sender gathers requests before it sends
CONNECT_TIMEOUT, READ_TIMEOUT = 1.0, 5.0  # seconds: an outage costs the thread, not requests


class Served(NamedTuple):
    """One answered request, as the reply path left it: references only."""

    at: float  # time.time() when it was answered
    model: LoadedModel
    alias: str | None
    columns: list[str]
    values: list[list[Any]]
    features: np.ndarray | None  # the matrix the model saw; None: read from the rows
    groups: np.ndarray | None
    predictions: list[dict[str, Any]]
    request_id: str
    features_as_of: str | None
    rows: list[int] | None = None  # each row's place in the request; None: 0, 1, ...
    shadow: bool = False  # scored off the reply path by the model that did not answer


class Shadow(NamedTuple):
    """A model that did not answer, to score some of a request's rows in the sender
    thread: `score` returns them as Served (shadow=True)."""

    model_id: str
    dataset: str
    rows: int  # how many rows it scores: what a drop or a failure counts
    score: Callable[[], Served]


Queued = Served | Shadow


def _rows(item: Queued) -> int:
    return item.rows if isinstance(item, Shadow) else len(item.predictions)


def _item_key(item: Queued) -> Key:
    return (item.dataset, item.model_id) if isinstance(item, Shadow) else _key(item.model)


def correlation_id(event: dict[str, Any] | None, header: str | None) -> str:
    """API Gateway's request id, else the caller's x-correlation-id, else a new one."""
    if event:
        found = (event.get("requestContext") or {}).get("requestId")
        if isinstance(found, str) and found:
            return found
    return header or str(uuid.uuid4())


def sampled(key: str, share: float, salt: bytes = b"") -> bool:
    """Whether a request keyed `key` (its first group id, else its correlation id) is
    captured: the same answer for the same key in every container, so a race is captured
    whole or not at all. Another use of a stable share (a traffic split, a shadow) passes
    a salt of its own, so its choice is independent of capture's: crc32 of a salted key
    would not do, as it is the key's crc32 XOR a constant (a 5 % split would then fall all
    inside or all outside a 50 % capture sample)."""
    if share >= 1.0:
        return True
    if not salt:  # capture's own, as it always was: the same races stay sampled
        return zlib.crc32(key.encode()) < share * 2**32
    digest = hashlib.blake2b(key.encode(), digest_size=4, person=salt).digest()
    return int.from_bytes(digest, "big") < share * 2**32


def firehose_client(settings: Settings) -> Any:
    """A Firehose client of its own session (boto3's default session is not safe to use
    from two threads), with short timeouts and one retry: an outage must not hold the
    sender for long while requests keep queueing."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": 2, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "firehose",
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        config=config,
    )


@dataclass
class Counts:
    captured: int = 0
    failures: int = 0
    dropped: int = 0
    shadow_dropped: int = 0
    shadow_failures: int = 0

    def values(self) -> dict[str, float]:
        shadow: dict[str, float] = {
            "ShadowDropped": self.shadow_dropped,
            "ShadowFailures": self.shadow_failures,
        }
        return {
            "CapturedRows": self.captured,
            "CaptureFailures": self.failures,
            "CaptureDropped": self.dropped,
        } | {name: n for name, n in shadow.items() if n}  # metrics only where there is shadow


Key = tuple[str, str]  # (dataset, model id): the metrics' dimensions


class Capture:
    """The predict path's capture: `capture` per answered request, a sender thread, and
    running totals (`totals`) beside the EMF lines."""

    def __init__(
        self,
        stream: str,
        client: Callable[[], Any],
        *,
        sample: float = 1.0,
        max_queued: int = MAX_QUEUED_REQUESTS,
        out: TextIO | None = None,
    ) -> None:
        if not stream:
            raise ValueError("capture needs a Firehose delivery stream name")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"capture_sample must be from 0 to 1, not {sample!r}")
        self.stream, self.sample = stream, sample
        self._make_client = client
        self._client: Any = None
        self._queue: queue.Queue[Queued] = queue.Queue(maxsize=max_queued)
        self._out = out
        self._lock = threading.Lock()  # the counts, touched by both sides
        self._pending: dict[Key, Counts] = {}  # since the last EMF line
        self.totals = Counts()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, out: TextIO | None = None) -> Capture | None:
        """The capture the settings ask for; None when capture_stream is not set."""
        if not settings.capture_stream:
            return None
        return cls(
            settings.capture_stream,
            lambda: firehose_client(settings),
            sample=settings.capture_sample,
            out=out,
        )

    # -- the reply path: references onto the queue, nothing more ---------------------

    def capture(
        self,
        model: LoadedModel,
        alias: str | None,
        columns: list[str],
        values: list[list[Any]],
        predictions: list[dict[str, Any]],
        request_id: str,
        *,
        features: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        features_as_of: str | None = None,
        rows: list[int] | None = None,
        sample_key: str | None = None,
    ) -> None:
        """Queue what one request (or the part of it one model answered: `rows`, their
        places in the request) was answered with; never raises, never waits. The sample
        is decided by `sample_key` when given (one key for every part of a request),
        else by the request's first group, else its id."""
        if self.sample < 1.0 and not self.takes(  # all taken: no key to find
            sample_key or _first_group(model, columns, values, groups) or request_id
        ):
            return
        served = Served(
            time.time(),
            model,
            alias,
            columns,
            values,
            features,
            groups,
            predictions,
            request_id,
            features_as_of,
            rows,
        )
        self._put(served)

    def takes(self, sample_key: str) -> bool:
        """Whether a request keyed `sample_key` is in the capture sample."""
        return self.sample >= 1.0 or sampled(sample_key, self.sample)

    def shadow(self, job: Shadow) -> None:
        """Queue a shadow scoring (the caller checked `takes`); never raises, never waits.
        Shadows may fill half the queue only: the served rows' records come first."""
        if self._queue.qsize() >= self._queue.maxsize // 2:
            self._add(_item_key(job), shadow_dropped=job.rows)
            return
        self._put(job)

    def _put(self, item: Queued) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if isinstance(item, Shadow):
                self._add(_item_key(item), shadow_dropped=item.rows)
            else:
                self._add(_item_key(item), dropped=_rows(item))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="gallop-capture", daemon=True
                )
                self._thread.start()

    # -- the sender thread ----------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued request has been sent (or counted as failed), then print
        the counts not yet printed; False if `timeout` seconds were not enough. For tests
        and shutdown: the reply path never calls it."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._start()
            time.sleep(0.005)
        self._emit()
        return True

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            rows = _rows(batch[0])
            # Gather for a moment: one call for many requests costs the process (and the
            # requests beside it) far less than a call each.
            until = time.monotonic() + LINGER_SECONDS
            while rows < MAX_ROWS_PER_SEND:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
                rows += _rows(batch[-1])
            served: list[Served] = []
            try:  # a shadow that cannot be scored is counted as such, and left out
                served = [s for s in map(self._scored, batch) if s is not None]
                self._deliver(served)
            except Exception:  # the thread must outlive anything; the rows are counted
                log.exception("capture: %d rows not delivered", rows)
                for one in served:
                    self._add(_key(one.model), failures=len(one.predictions))
            finally:
                for _ in batch:
                    self._queue.task_done()
            self._emit()

    def _deliver(self, batch: list[Served]) -> None:
        records: list[tuple[Key, bytes]] = []
        for served in batch:
            key = _key(served.model)
            try:
                records.extend((key, line) for line in lines(served))
            except Exception:  # a row that cannot be written must not stop the others
                log.exception("capture: request %s could not be written", served.request_id)
                self._add(key, failures=len(served.predictions))
            # Let a request in between requests' records: a thread that wants the GIL
            # otherwise waits for the switch interval (5 ms), a request's whole p99.
            time.sleep(0)
        for chunk in _chunks(records, self._add):
            self._send(chunk)

    def _scored(self, item: Queued) -> Served | None:
        """A shadow job's rows, scored here, off the reply path; None when they could not
        be (counted and logged: a challenger that cannot score the champion's rows)."""
        if not isinstance(item, Shadow):
            return item
        try:
            scored = item.score()
            time.sleep(0)  # a request waiting for the GIL goes first (see _deliver)
            return scored
        except Exception as exc:  # any failure is the shadow model's alone: counted, logged
            log.warning("shadow: %s could not score %d rows: %s", item.model_id, item.rows, exc)
            self._add(_item_key(item), shadow_failures=item.rows)
            return None

    def _send(self, chunk: list[tuple[Key, bytes]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in (1, 2):  # the records a partial failure left, once more
            try:
                if self._client is None:
                    self._client = self._make_client()
                reply = self._client.put_record_batch(
                    DeliveryStreamName=self.stream, Records=[{"Data": d} for _, d in chunk]
                )
            except (BotoCoreError, ClientError) as exc:
                log.warning(
                    "capture: %d rows not delivered to %s: %s", len(chunk), self.stream, exc
                )
                for key, _ in chunk:
                    self._add(key, failures=1)
                return
            answers = reply.get("RequestResponses") or []
            failed = [
                record
                for record, answer in zip(chunk, answers, strict=True)
                if answer.get("ErrorCode")
            ]
            for key, _ in chunk:
                self._add(key, captured=1)
            for key, _ in failed:
                self._add(key, captured=-1)
            if not failed:
                return
            if attempt == 2:
                codes = sorted({a.get("ErrorCode") for a in answers if a.get("ErrorCode")})
                log.warning("capture: %d rows refused by %s: %s", len(failed), self.stream, codes)
                for key, _ in failed:
                    self._add(key, failures=1)
                return
            chunk = failed

    # -- counts and their EMF lines -------------------------------------------------------

    def _counts(self, key: Key) -> Counts:
        found = self._pending.get(key)
        if found is None:
            found = self._pending[key] = Counts()
        return found

    def _add(
        self,
        key: Key,
        captured: int = 0,
        failures: int = 0,
        dropped: int = 0,
        shadow_dropped: int = 0,
        shadow_failures: int = 0,
    ) -> None:
        """Rows counted for a (dataset, model), since its last EMF line and in the totals."""
        with self._lock:
            for counts in (self._counts(key), self.totals):
                counts.captured += captured
                counts.failures += failures
                counts.dropped += dropped
                counts.shadow_dropped += shadow_dropped
                counts.shadow_failures += shadow_failures

    def _emit(self) -> None:
        """One EMF line per (dataset, model) counted since the last lines."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (dataset, model_id), counts in pending.items():
            line = emf_line(SERVICE, counts.values(), {"dataset": dataset, "model": model_id})
            print_emf(line, self._out)


def _key(model: LoadedModel) -> Key:
    return (model.manifest.get("dataset") or NO_DATASET, model.model_id)


def _first_group(
    model: LoadedModel, columns: list[str], values: list[list[Any]], groups: np.ndarray | None
) -> str | None:
    if groups is not None and len(groups):
        return str(groups[0])
    group = model.group
    if group and group in columns and values:
        first = values[0][columns.index(group)]
        return None if first is None else str(first)
    return None


def _chunks(
    records: list[tuple[Key, bytes]], count: Callable[..., None]
) -> Iterator[list[tuple[Key, bytes]]]:
    """PutRecordBatch calls' worth: at most 500 records and 4 MiB each; a record over
    Firehose's 1,000 KiB is counted as a failure and left out."""
    chunk: list[tuple[Key, bytes]] = []
    size = 0
    for key, data in records:
        if len(data) > MAX_RECORD_BYTES:
            log.warning("capture: a %d-byte row is over Firehose's record limit", len(data))
            count(key, failures=1)
            continue
        if chunk and (len(chunk) == MAX_BATCH_RECORDS or size + len(data) > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((key, data))
        size += len(data)
    if chunk:
        yield chunk


# -- the record -------------------------------------------------------------------------


def lines(served: Served) -> list[bytes]:
    """The JSON Lines records of one request, one per row, each ending in a newline."""
    return [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records(served)]


def records(served: Served) -> list[dict[str, Any]]:
    """One record per served row:

    {"v": 1, "at": UTC ISO time, "request_id", "dataset" ("_" without one), "model_id",
     "alias" (the name asked for, when it was an alias; a shadow's: its own alias),
     "task", "group", "entity" (the entity id, or an ungrouped row's id, as text), "row"
     (0-based in the request), "features" (as the model saw them, in its order; NaN as
     null), "categories" (each categorical feature's text as sent), "outputs" (the
     reply's prediction; a shadow's: what its model would have answered), "shadow"
     (true: scored off the reply path by the model that did not answer),
     "features_as_of" (a race card's snapshot version)}
    """
    model = served.model
    features, groups = served.features, served.groups
    if features is None:  # feature rows: as the reply path read them (already checked)
        features, groups = feature_matrix(model, served.columns, served.values)
    where = {name: i for i, name in enumerate(served.columns)}
    entity = entity_column(model)
    entity_at = where.get(entity) if entity else None
    categorical = [(name, where.get(name)) for name in model.manifest.get("categorical") or {}]
    base = {
        "v": RECORD_VERSION,
        "at": datetime.fromtimestamp(served.at, UTC).isoformat(timespec="microseconds"),
        "request_id": served.request_id,
        "dataset": _key(model)[0],
        "model_id": model.model_id,
        "alias": served.alias,
        "task": model.task,
    }
    out = []
    places = served.rows
    for i, prediction in enumerate(served.predictions):
        row = served.values[i]
        out.append(
            base
            | {
                "group": None if groups is None else _text(groups[i]),
                "entity": _text(row[entity_at]) if entity_at is not None else None,
                "row": i if places is None else places[i],
                "features": features[i],
                "categories": {n: _text(row[j]) if j is not None else None for n, j in categorical},
                "outputs": prediction,
                "shadow": served.shadow,
                "features_as_of": served.features_as_of,
            }
        )
    return out


def entity_column(model: LoadedModel) -> str | None:
    """The column that names a row's entity (a runner; for ungrouped tasks the row id the
    client sends): the last of the spec's identifiers (group, time, entity, in that order)
    that is not the group."""
    others = [c for c in model.manifest.get("identifiers") or [] if c != model.group]
    return others[-1] if others else None


def _text(value: Any) -> str | None:
    return None if value is None else id_text(value)


# -- reading captured rows back ---------------------------------------------------------


@dataclass
class CapturedRows:
    """A model's captured rows as arrays (in time order)."""

    at: np.ndarray  # datetime64[us], UTC
    group: np.ndarray  # object: str | None
    entity: np.ndarray  # object: str | None
    features: np.ndarray  # float32 [n, features], NaN where missing
    score: np.ndarray  # float64
    outputs: dict[str, np.ndarray]  # float64 each, NaN where a row lacks it
    categories: dict[str, np.ndarray]  # object: the text sent, or None
    request_id: np.ndarray  # object
    keys: list[str] = field(default_factory=list)  # the S3 objects read
    rows_per_key: dict[str, int] = field(default_factory=dict)  # what the monitor counts

    def __len__(self) -> int:
        return len(self.score)


def read_captured(
    store: Store, dataset: str, model_id: str, since_day: str | None = None
) -> CapturedRows:
    """Every row captured for a model (dataset "_" for a model without one), or those of
    `since_day` (YYYY-MM-DD) and later, from the data bucket."""
    prefix = capture_prefix(dataset, model_id)
    # A year of capture is thousands of objects a model: list only the window's days.
    days = [f.removeprefix(prefix) for f in store.list_folders(prefix)]
    keys = [
        key
        for day in sorted(days)
        if since_day is None or day.removeprefix("date=").rstrip("/") >= since_day
        for key in store.list_keys(prefix + day)
    ]
    rows: list[dict[str, Any]] = []
    rows_per_key: dict[str, int] = {}
    for key in keys:
        read = [orjson.loads(line) for line in store.get_bytes(key).splitlines() if line.strip()]
        rows_per_key[key] = len(read)
        rows.extend(read)
    rows.sort(key=lambda r: r["at"])
    captured = _arrays(rows, keys)
    captured.rows_per_key = rows_per_key
    return captured


def _arrays(rows: list[dict[str, Any]], keys: list[str]) -> CapturedRows:
    n = len(rows)
    width = len(rows[0]["features"]) if rows else 0
    names = list(dict.fromkeys(name for r in rows for name in r["outputs"]))
    outputs = {
        name: np.array([r["outputs"].get(name) for r in rows], dtype=np.float64) for name in names
    }
    categorical = list(dict.fromkeys(name for r in rows for name in r.get("categories") or {}))
    return CapturedRows(
        at=np.array([_utc(r["at"]) for r in rows], dtype="datetime64[us]"),
        group=np.array([r["group"] for r in rows], dtype=object),
        entity=np.array([r["entity"] for r in rows], dtype=object),
        features=np.array([r["features"] for r in rows], dtype=np.float32).reshape(n, width),
        score=outputs.get("score", np.empty(0, dtype=np.float64)),
        outputs=outputs,
        categories={
            name: np.array([(r.get("categories") or {}).get(name) for r in rows], dtype=object)
            for name in categorical
        },
        request_id=np.array([r["request_id"] for r in rows], dtype=object),
        keys=keys,
    )


def _utc(text: str) -> str:
    """An ISO time as numpy reads it: UTC, without the offset."""
    if text.endswith("+00:00"):
        return text[:-6]
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None).isoformat()
