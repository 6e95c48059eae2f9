"""The local S3's front: a WSGI layer before moto's server app, on 127.0.0.1.

moto checks no signature and no POST policy, and keeps objects in memory only. For the
stack's buckets this front refuses what S3 would refuse (gallop.local.s3_auth), and
writes each object a request wrote or deleted through to the disk mirror before the
reply leaves: whoever records an object's key in the metadata after the call returns
knows the object is on disk, so a crash can no longer leave metadata naming objects
that are gone. The upload notification moto sends is held until then too: ingest,
woken by it, could otherwise end the process before the object reached the disk.
"""

from __future__ import annotations

import io
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, unquote

from moto.core.request import Request as MotoRequest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3 import notifications
from moto.s3.responses import S3Response
from moto.s3bucket_path.utils import bucket_name_from_url, parse_key_name
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.serving import make_server
from werkzeug.wsgi import get_input_stream

from gallop.local.mirror import S3Mirror
from gallop.local.s3_auth import FormUpload, Request, S3Auth, S3Refusal

log = logging.getLogger(__name__)

WRITES = ("PUT", "POST", "DELETE")
Environ = dict[str, Any]

_send_event = notifications.send_event
_held = threading.local()  # this request's notifications, while its write is not on disk


def _send_event_unless_held(*args: Any, **kwargs: Any) -> None:
    events: list[tuple[Any, Any]] | None = getattr(_held, "events", None)
    if events is None:
        _send_event(*args, **kwargs)
    else:
        events.append((args, kwargs))


# moto's bucket code looks send_event up on the module at each call
notifications.send_event = _send_event_unless_held


class LocalS3Front:
    def __init__(self, moto: DomainDispatcherApplication, auth: S3Auth, mirror: S3Mirror) -> None:
        self.moto, self.auth, self.mirror = moto, auth, mirror
        # A write and its copy to disk happen as one step, so that two writes of one key
        # cannot reach the disk in the other order than they reached moto.
        self._writes = threading.Lock()

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        if self.moto.get_application(environ).service != "s3":  # type: ignore[attr-defined]
            return self.moto(environ, start_response)
        request = MotoRequest(environ)
        if S3Response.subdomain_based_buckets(request):
            refusal = S3Refusal(400, "InvalidRequest", "the local S3 takes path-style URLs only")
            return _refuse(refusal, environ, start_response)
        bucket = bucket_name_from_url(request.raw_url)
        if bucket is None or not self.mirror.keeps(bucket):
            return self.moto(environ, start_response)
        key = parse_key_name(unquote(request.raw_path))
        body = _buffer(environ)
        try:
            upload = self._check(environ, request, bucket, key, body)
        except S3Refusal as refusal:
            return _refuse(refusal, environ, start_response)
        if request.method not in WRITES:
            return self.moto(environ, start_response)
        written = [upload.key] if upload else _written_keys(request.method, key, request, body)
        with self._writes:
            held: list[tuple[Any, Any]] = []
            _held.events = held
            try:
                status, headers, reply = _call(self.moto, environ)
            finally:
                _held.events = None
            if int(status.split()[0]) < 300:
                try:
                    for name in written:
                        self.mirror.keep(bucket, name)
                except OSError as exc:
                    log.exception("could not keep s3://%s/%s on disk", bucket, written)
                    not_kept = S3Refusal(500, "InternalError", f"not kept on disk: {exc}")
                    return _refuse(not_kept, environ, start_response)
            for args, kwargs in held:  # the object is on disk: whoever it wakes may read it
                _send_event(*args, **kwargs)
        start_response(status, headers)
        return [reply]

    def _check(
        self, environ: Environ, request: MotoRequest, bucket: str, key: str, body: bytes
    ) -> FormUpload | None:
        """Refuse what S3 would; a browser upload's policy decides where it writes."""
        query = environ.get("QUERY_STRING", "")
        if request.method == "POST" and not key and request.mimetype == "multipart/form-data":
            # Parsed as moto parses it (the same request class), so both see one form.
            fields, files = request.form, request.files
            environ["wsgi.input"] = io.BytesIO(body)  # for moto's parse
            return self.auth.check_form(bucket, fields, files, query)
        self.auth.check_signed(
            Request(
                method=request.method,
                host=request.host,
                raw_path=request.raw_path,
                query=query,
                headers=cast(Mapping[str, str], request.headers),  # werkzeug's, case-blind
                body=body,
            )
        )
        return None


def _written_keys(method: str, key: str, request: MotoRequest, body: bytes) -> list[str]:
    """The objects a (signed) write request may change."""
    args = parse_qs(request.query_string.decode(), keep_blank_values=True)
    if "uploadId" in args:  # a part, an abort: no object yet; a completion: the object
        return [key] if method == "POST" and key else []
    if method == "POST":
        return _keys_to_delete(body) if "delete" in args else []
    return [key] if key else []  # PUT (object, copy, metadata), DELETE


def _keys_to_delete(body: bytes) -> list[str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return []  # moto refuses it as MalformedXML; nothing is deleted
    return [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]


def _buffer(environ: Environ) -> bytes:
    """Read the whole body (signatures and policies are checked on it), and hand moto a
    copy of it."""
    body = get_input_stream(environ).read()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input_terminated"] = False
    return body


def _call(app: Any, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
    reply: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        reply.update(status=status, headers=headers)
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return reply["status"], reply["headers"], body


def _refuse(refusal: S3Refusal, environ: Environ, start_response: Any) -> list[bytes]:
    body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else refusal.xml()
    status = f"{refusal.status} {HTTP_STATUS_CODES.get(refusal.status, 'Error')}"
    start_response(
        status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


class LocalAwsServer:
    """moto's server app behind the local S3 front, on 127.0.0.1 (as ThreadedMotoServer
    serves it, which has no place for a front). The port is taken at construction, so
    that the stack can name its endpoint before requests are served."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._front: LocalS3Front | None = None
        self._server = make_server(
            host, 0, self._app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-aws", daemon=True
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self, auth: S3Auth, mirror: S3Mirror) -> None:
        self._front = LocalS3Front(DomainDispatcherApplication(create_backend_app), auth, mirror)
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _app(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        assert self._front is not None, "start() first"
        return self._front(environ, start_response)
