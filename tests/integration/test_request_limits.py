"""What a request may weigh: bodies over a route's limit are refused before they are read,
over HTTP (uvicorn, as `gallop serve` runs the app) and on Lambda (Mangum)."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from gallop.api.app import create_app, meter
from gallop.local.stack import free_port
from gallop.metadata.db import engine_for, migrate
from gallop.settings import MAX_ECHO_CHARS, Settings

KEY = "limits-key"
LIMIT = 64 * 1024  # the test's body limit: small, so that passing it is cheap
DECLARED = 1024**3  # what the client says it will send
SENT_AT_MOST = 64 * 1024**2  # what it is ready to send before it gives up
# What the kernel holds between the two ends of a loopback connection (send and receive
# buffers, a few MB each): a client may get that far before a refusal reaches it.
IN_FLIGHT = 16 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The app under uvicorn on 127.0.0.1, its port."""
    state = tmp_path_factory.mktemp("limits")
    settings = Settings(
        state_dir=state,
        api_keys=KEY,
        max_body_bytes=LIMIT,
        max_rows_body_bytes=2 * LIMIT,
        aws_endpoint_url="http://127.0.0.1:9",
    )
    migrate(engine_for(settings.sqlalchemy_url))
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    while not served.started:
        time.sleep(0.02)
    yield port
    served.should_exit = True
    thread.join(timeout=10)


class Upload:
    """A client that sends a request head, then body chunks as fast as the server takes
    them, until SENT_AT_MOST or the server closes; and reads the reply meanwhile."""

    def __init__(self, port: int, head: bytes, chunk: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(head)
        self.sent = 0
        self.finished = False
        self.sent_when_answered: int | None = None
        self._chunk = chunk
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        try:
            while self.sent < SENT_AT_MOST:
                self.sock.sendall(self._chunk)
                self.sent += len(self._chunk)
            self.finished = True
        except OSError:  # the server closed the connection: what a refusal should do
            pass

    def reply(self) -> tuple[int, dict]:
        data = b""
        while b"\r\n\r\n" not in data:
            got = self.sock.recv(65536)
            if self.sent_when_answered is None:
                self.sent_when_answered = self.sent
            assert got, "the server closed the connection without replying"
            data += got
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += self.sock.recv(65536)
        self._sender.join(timeout=20)
        self.sock.close()
        return int(head.split(b" ")[1]), json.loads(body)


def request_head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"x-api-key: {KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(size: int) -> bytes:
    return f"{size:x}\r\n".encode() + b" " * size + b"\r\n"


@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/training-runs", "/v1/predict"])
def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(
    server: int, path: str
) -> None:
    # GIVEN a client that says it sends 1 GiB, and sends as long as the server reads
    upload = Upload(server, request_head(path, f"content-length: {DECLARED}"), b" " * 65536)
    # WHEN the server answers
    status, body = upload.reply()
    # THEN 413, saying what the limit is, before the client sent more than the sockets hold
    assert status == 413
    assert "bytes, the most this route takes" in body["detail"]
    assert upload.sent_when_answered is not None and upload.sent_when_answered < IN_FLIGHT
    # AND the server read no more: it closed the connection instead
    assert not upload.finished and upload.sent < SENT_AT_MOST


@pytest.mark.parametrize(("path", "limit"), [("/v1/datasets", LIMIT), ("/v1/predict", 2 * LIMIT)])
def test_a_chunked_body_is_counted_and_refused_past_the_limit(
    server: int, path: str, limit: int
) -> None:
    # GIVEN a body without a length, streamed in 4 KiB chunks
    head = request_head(path, "content-type: application/json", "transfer-encoding: chunked")
    upload = Upload(server, head, chunked(4096))
    status, body = upload.reply()
    # THEN 413 once the count passes the route's limit, and the rest is never read
    assert status == 413, body
    assert f"over {limit:,} bytes" in body["detail"]
    assert upload.sent_when_answered is not None and upload.sent_when_answered < IN_FLIGHT
    assert not upload.finished and upload.sent < SENT_AT_MOST


def test_a_body_within_the_limit_is_read_as_before(server: int) -> None:
    spec = json.dumps({"name": "limits", "task": "binary", "target": "y"}).encode()
    head = request_head(
        "/v1/datasets", "content-type: application/json", f"content-length: {len(spec)}"
    )
    with socket.create_connection(("127.0.0.1", server), timeout=20) as sock:
        sock.sendall(head + spec)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 201")


def test_the_lambda_handler_refuses_an_oversize_body_the_same_way(tmp_path: Path) -> None:
    """Mangum hands the whole event over: the body is counted there, with or without a
    Content-Length header, and answered as uvicorn answers it."""
    from gallop.api.gateway import asgi_handler
    from tests.conftest import load_event

    settings = Settings(state_dir=tmp_path, api_keys=KEY, max_body_bytes=LIMIT)
    handler = asgi_handler(create_app(settings, serve_predictions=False))
    event = load_event("apigw_get_health.json")
    body = json.dumps({"name": "x" * LIMIT})
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    event |= {"path": "/v1/datasets", "httpMethod": "POST", "body": body}
    event |= {"headers": headers, "multiValueHeaders": {k: [v] for k, v in headers.items()}}
    try:
        reply = handler(event, None)
        declared = {**headers, "content-length": str(len(body))}
        event_declared = event | {
            "headers": declared,
            "multiValueHeaders": {k: [v] for k, v in declared.items()},
        }
        reply_declared = handler(event_declared, None)
    finally:
        meter.clear_metrics()  # the handler would have published them; no other test sees them
    assert reply["statusCode"] == 413
    assert (
        json.loads(reply["body"])["detail"]
        == f"the body is over {LIMIT:,} bytes, the most this route takes"
    )
    assert reply_declared["statusCode"] == 413


# -- what a reply says back ----------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(state_dir=tmp_path, api_keys=KEY, aws_endpoint_url="http://127.0.0.1:9")
    migrate(engine_for(settings.sqlalchemy_url))
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/v1/datasets/" + "x" * 20_000,
        "/v1/datasets/races/versions/" + "v" * 20_000,
        "/v1/datasets/races/uploads/" + "u" * 20_000,
        "/v1/datasets/races/versions/v-1/features/" + "x" * 20_000,
        "/v1/models/m-" + "f" * 20_000,
        "/v1/training-runs/" + "a" * 20_000,
    ],
)
def test_an_id_past_its_pattern_or_length_is_422_and_not_said_back(
    api: TestClient, path: str
) -> None:
    # GIVEN the dataset exists, so that only the id can be wrong
    api.post("/v1/datasets", json={"name": "races", "task": "binary", "target": "y"})
    reply = api.get(path)
    assert reply.status_code in (404, 422), reply.text[:300]  # 404: no such route
    assert len(reply.content) < 1_000


def test_a_long_correlation_id_is_cut_short_in_the_reply_and_the_log(api: TestClient) -> None:
    from gallop.api.app import log

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)  # the log's own format, into a buffer
    handler.setFormatter(log.registered_formatter)
    log.addHandler(handler)
    try:
        reply = api.get("/v1/health", headers={"x-correlation-id": "c" * 50_000})
    finally:
        log.removeHandler(handler)
    assert reply.status_code == 200
    said = reply.headers["x-correlation-id"]
    assert said.startswith("c" * MAX_ECHO_CHARS) and len(said) < MAX_ECHO_CHARS + 40
    (logged,) = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert logged["correlation_id"] == said
