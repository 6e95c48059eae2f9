"""The local stack: AWS stood in for by an in-process moto server on 127.0.0.1.

The same handlers run as in AWS: S3 notifies SQS of uploads, a poller hands SQS
batches to functions/ingest/handler.py as Lambda would, and the FastAPI app serves
the API through uvicorn. Local state (the S3 objects and the SQLite metadata)
lives under one state directory and survives a restart. Predictions are captured
through moto's Firehose into the data bucket, partitioned as on AWS
(gallop.local.firehose), unless GALLOP_CAPTURE_STREAM is set empty.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import select

from gallop import aws
from gallop.ingest.events import object_created_body
from gallop.ingest.service import reject_unprocessable
from gallop.local import firehose as local_firehose
from gallop.local import provision
from gallop.local.lambda_runtime import SqsPoller, load_handler
from gallop.local.mirror import S3Mirror
from gallop.local.repair import repair
from gallop.local.s3_auth import S3Auth
from gallop.local.s3_front import LocalAwsServer
from gallop.metadata import repo
from gallop.metadata.db import dispose_engine, engine_for, migrate, session_scope
from gallop.metadata.models import Upload, VersionStatus
from gallop.serving.registry import publish_all
from gallop.settings import (
    ENV_API_KEYS,
    ENV_AWS_ENDPOINT_URL,
    ENV_CAPTURE_STREAM,
    ENV_DATABASE_URL,
    ENV_FEATURES_QUEUE_URL,
    ENV_INGEST_QUEUE_URL,
    ENV_MONITOR_QUEUE_URL,
    MAX_RECEIVE_COUNT,
    ROLES,
    Settings,
    api_key_entry,
    get_settings,
    parse_api_keys,
)
from gallop.storage import Store
from gallop.training.runs import fail_interrupted_runs

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"
LOCAL_KEY_NAME = "local"  # the generated key's name: the actor in the alias history
LOCAL_VISIBILITY_TIMEOUT = 10  # seconds before a failed message is retried locally
CAPTURE_STREAM = "gallop-capture"  # the local capture stream, unless the environment names one


class StateDirBusy(RuntimeError):
    """Another local stack owns this state directory."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_api_key() -> str:
    """A random key, never starting with "-": a command line takes `--api-key KEY` as an
    option there (one key in 64 of token_urlsafe's did, and `gallop monitor` refused it)."""
    return "gk" + secrets.token_urlsafe(24)


def api_key_for(state_dir: Path) -> str:
    """The local API key: the first of GALLOP_API_KEYS, else one generated once per state
    dir (the key named `local`, with every role)."""
    configured = parse_api_keys(os.environ.get(ENV_API_KEYS, ""))
    if configured:
        return configured[0].secret
    path = state_dir / "api_key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        write_private(path, new_api_key())
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write a file that holds the API key: its owner's alone (0600) from the moment it
    exists, whatever the umask, and an older file's mode put right."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(descriptor, 0o600)
        file.write(text)


def running_endpoints(state_dir: Path) -> dict[str, str] | None:
    """The API of a local stack that holds this state directory, if one runs."""
    path = state_dir / ENDPOINTS_FILE
    if not path.exists():
        return None
    with open(state_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return json.loads(path.read_text())
        fcntl.flock(lock, fcntl.LOCK_UN)
    return None


class LocalStack:
    def __init__(
        self,
        state_dir: Path,
        *,
        fresh: bool = False,
        quiet: bool = False,
        settings_overrides: dict[str, str] | None = None,
        visibility_timeout: int = LOCAL_VISIBILITY_TIMEOUT,
        role_keys: dict[str, str] | None = None,
    ) -> None:
        """role_keys: more keys to accept, name -> roles ("reader", "reader+writer"), each
        with a secret of its own (`api_keys[name]`): a test's reader-only key."""
        self.state_dir = state_dir.expanduser().resolve()
        self.fresh = fresh
        self.quiet = quiet
        self.overrides = settings_overrides or {}
        self.visibility_timeout = visibility_timeout
        self.role_keys = role_keys or {}
        self.api_key = ""
        # name -> secret of the role_keys: new ones each run (tests' keys, never on disk)
        self.api_keys = {name: new_api_key() for name in self.role_keys}
        self.api_url: str | None = None
        self._lock_file: Any = None
        self._aws: LocalAwsServer | None = None
        self._saved_env: dict[str, str | None] = {}
        self._mirror: S3Mirror | None = None
        self.poller: SqsPoller | None = None
        self.features_poller: SqsPoller | None = None
        self.monitor_poller: SqsPoller | None = None
        self._monitor_timer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_thread: threading.Thread | None = None
        self._app: Any = None
        self.settings: Settings | None = None
        self.resources: provision.Resources | None = None

    # -- lifecycle -------------------------------------------------------------------

    def api_keys_setting(self) -> str:
        """The GALLOP_API_KEYS the stack serves with: as configured, else the local key
        with every role (the demo promotes and approves); and the role_keys."""
        configured = os.environ.get(ENV_API_KEYS, "").strip()
        entries = [configured or api_key_entry(LOCAL_KEY_NAME, "+".join(ROLES), self.api_key)]
        entries += [api_key_entry(n, r, self.api_keys[n]) for n, r in self.role_keys.items()]
        return ",".join(entries)

    def start(self) -> LocalStack:
        if self._aws is not None:  # a second start would leave the first's pollers running
            raise RuntimeError("this local stack is already started: use it, or stop it")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.state_dir / ".lock", "a+")  # noqa: SIM115 - held while up
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StateDirBusy(
                f"{self.state_dir} is in use by another gallop local stack (gallop serve?)"
            ) from None
        if self.fresh:
            dispose_engine(f"sqlite:///{self.state_dir / 'gallop.db'}")
            shutil.rmtree(self.state_dir / "s3", ignore_errors=True)
            for name in ("gallop.db", "gallop.db-wal", "gallop.db-shm", ENDPOINTS_FILE):
                (self.state_dir / name).unlink(missing_ok=True)

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
        self._aws = LocalAwsServer()
        endpoint = self._aws.endpoint
        # The local S3 takes requests signed by the stack's keys or by its caller's.
        signers = {os.environ.get("AWS_ACCESS_KEY_ID"): os.environ.get("AWS_SECRET_ACCESS_KEY")}
        self.api_key = api_key_for(self.state_dir)
        self._set_env(
            {
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": "us-east-1",
                "GALLOP_STATE_DIR": str(self.state_dir),
                ENV_AWS_ENDPOINT_URL: endpoint,
                ENV_API_KEYS: self.api_keys_setting(),
                **(
                    {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"}
                    if self.quiet
                    else {}
                ),
                **self.overrides,
            }
        )
        # As the CDK stack does for deployed functions, name the database explicitly.
        self._set_env(
            {
                ENV_DATABASE_URL: os.environ.get(ENV_DATABASE_URL)
                or f"sqlite:///{self.state_dir / 'gallop.db'}"
            }
        )
        signers[os.environ["AWS_ACCESS_KEY_ID"]] = os.environ["AWS_SECRET_ACCESS_KEY"]
        settings = get_settings()
        buckets = [settings.data_bucket, settings.artifacts_bucket]
        self._mirror = S3Mirror(buckets, self.state_dir / "s3")
        self._aws.start(
            S3Auth({k: v for k, v in signers.items() if k and v is not None}), self._mirror
        )
        local_firehose.install(self._mirror.keep)  # capture lands as on AWS, and on disk
        # moto's backends are process-wide: start from nothing, then restore from disk.
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        s3, sqs = aws.client("s3", settings), aws.client("sqs", settings)
        for bucket in buckets:
            provision.create_bucket(s3, bucket)
        restored = self._mirror.restore()  # before notifications: old objects are not new uploads
        queue, dlq = provision.create_queue_with_dlq(
            sqs, settings.ingest_queue_name, self.visibility_timeout
        )
        features, features_dlq = provision.create_queue_with_dlq(
            sqs, settings.features_queue_name, self.visibility_timeout
        )
        monitor, _ = provision.create_queue_with_dlq(
            sqs, settings.monitor_queue_name, self.visibility_timeout
        )
        provision.notify_on_raw_uploads(s3, sqs, settings.data_bucket, queue)
        # Predictions are captured by default; GALLOP_CAPTURE_STREAM="" turns that off.
        capture = os.environ.get(ENV_CAPTURE_STREAM, CAPTURE_STREAM)
        if capture:
            firehose = aws.client("firehose", settings)
            provision.create_capture_stream(firehose, capture, settings.data_bucket)
        self._set_env(
            {
                ENV_INGEST_QUEUE_URL: queue.url,
                ENV_FEATURES_QUEUE_URL: features.url,
                ENV_MONITOR_QUEUE_URL: monitor.url,
                ENV_CAPTURE_STREAM: capture,
            }
        )
        self.settings = settings = get_settings()
        self.resources = provision.Resources(
            settings.data_bucket, queue, dlq, features, features_dlq
        )

        engine = engine_for(settings.sqlalchemy_url)
        artifacts = Store(settings.artifacts_bucket, s3)
        migrate(engine)
        publish_all(engine, artifacts)  # the serving objects, as the rows name them now
        interrupted = fail_interrupted_runs(engine)  # their thread died with the last process
        repairs = repair(
            engine,
            Store(settings.data_bucket, s3),
            artifacts,
            lambda request: sqs.send_message(QueueUrl=features.url, MessageBody=request.to_json()),
        )
        self.poller = SqsPoller(sqs, queue.url, queue.arn, load_handler("ingest"), "ingest")
        self.features_poller = SqsPoller(
            sqs, features.url, features.arn, load_handler("features"), "features"
        )
        self.monitor_poller = SqsPoller(
            sqs, monitor.url, monitor.arn, load_handler("monitor"), "monitor"
        )
        for poller in (self.poller, self.features_poller, self.monitor_poller):
            poller.start()
        redriven = self._redrive_pending_uploads(s3, sqs)
        log.info(
            "local stack up: %d objects restored, %d uploads re-driven, %d runs interrupted, %s",
            restored,
            redriven,
            interrupted,
            repairs,
        )
        return self

    def serve_api(self, port: int = 8000, *, block: bool = False) -> str:
        """Serve the API with uvicorn on 127.0.0.1; in a thread unless block=True."""
        from gallop.api.app import create_app

        assert self.settings is not None, "start() first"
        app = self._app = create_app(self.settings)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning" if self.quiet else "info"
        )
        self._uvicorn = uvicorn.Server(config)
        self.api_url = f"http://127.0.0.1:{port}"
        write_private(
            self.state_dir / ENDPOINTS_FILE,
            json.dumps({"api_url": self.api_url, "api_key": self.api_key}),
        )
        if block:
            self._uvicorn.run()
            return self.api_url
        self._uvicorn_thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._uvicorn_thread.start()
        while not self._uvicorn.started:
            if not self._uvicorn_thread.is_alive():
                raise RuntimeError(f"the API could not start on 127.0.0.1:{port}")
            threading.Event().wait(0.02)
        return self.api_url

    def run_monitor_every(self, seconds: float) -> None:
        """Run the monitor every `seconds` in a thread, as the EventBridge schedule runs
        the monitor function on AWS (gallop serve); 0: never."""
        if seconds <= 0:
            return
        from gallop.monitoring.run import monitor

        def every() -> None:
            while not self._stopping.wait(seconds):
                try:
                    assert self.settings is not None
                    monitor(self.settings, scheduled=True)
                except Exception:  # the next tick tries again; the stack runs on
                    log.exception("the scheduled monitor run failed")

        self._monitor_timer = threading.Thread(target=every, name="monitor-timer", daemon=True)
        self._monitor_timer.start()

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            if self._uvicorn_thread is not None:
                self._uvicorn_thread.join(timeout=10)
        capture = getattr(self._app.state, "capture", None) if self._app is not None else None
        if capture is not None:  # what the API served last, before moto goes
            capture.flush(timeout=5)
        self._stopping.set()
        if self._monitor_timer is not None:
            self._monitor_timer.join(timeout=120)
        for poller in (self.poller, self.features_poller, self.monitor_poller):
            if poller is not None:
                poller.stop()
        if self._aws is not None:
            self._aws.stop()
            self._aws = None
        (self.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        if self.settings is not None:
            dispose_engine(self.settings.sqlalchemy_url)
        self._restore_env()
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------

    def _set_env(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        get_settings.cache_clear()
        aws.reset_clients()

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        get_settings.cache_clear()
        aws.reset_clients()

    def _redrive_pending_uploads(self, s3: Any, sqs: Any) -> int:
        """Uploads that arrived but were never settled (the stack stopped first) are queued
        again, so nothing a user sent is silently dropped; one that was re-sent
        MAX_RECEIVE_COUNT times is answered REJECTED instead (internal_error)."""
        assert self.settings is not None and self.resources is not None
        engine = engine_for(self.settings.sqlalchemy_url)
        with session_scope(engine) as session:
            pending = list(
                session.scalars(select(Upload).where(Upload.status == VersionStatus.PENDING.value))
            )
        store = Store(self.settings.data_bucket, s3)
        count = 0
        for upload in pending:
            try:
                size = s3.head_object(Bucket=self.settings.data_bucket, Key=upload.key)
            except s3.exceptions.ClientError:
                continue  # never uploaded (the presigned POST was not used)
            if upload.redriven >= MAX_RECEIVE_COUNT:
                # Each start that re-sent it ended before it settled: it ends the process
                # (as SQS would send it to the dead-letter queue, it is not sent again).
                reason = f"the local stack stopped {upload.redriven} times while ingesting it"
                reject_unprocessable(upload.key, store, engine, self.settings, reason)
                continue
            repo.count_redrive(engine, upload.upload_id)
            body = object_created_body(
                self.settings.data_bucket, upload.key, int(size["ContentLength"])
            )
            sqs.send_message(QueueUrl=self.resources.ingest.url, MessageBody=body)
            count += 1
        return count
