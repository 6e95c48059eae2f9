"""What S3 checks before it acts on a request, for the local S3 (moto checks none of it).

The stack's buckets are private: a request must be signed (SigV4, in the Authorization
header or in a presigned URL's query) with credentials the local stack knows, or be a
browser upload (presigned POST) whose policy is signed so and allows what is sent.
Refusals carry S3's status, error code and message. Signatures are recomputed with
botocore's own signers, the code that made them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from werkzeug.datastructures import FileStorage, MultiDict

ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE = "%Y%m%dT%H%M%SZ"
MAX_SKEW = timedelta(minutes=15)  # S3's RequestTimeTooSkewed
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600
# Form fields no policy condition needs to name (S3's rule for POST uploads).
UNCONDITIONED_FIELDS = {"policy", "x-amz-signature", "file"}


class S3Refusal(Exception):
    """A request S3 would refuse: its HTTP status, S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def xml(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message></Error>"
        ).encode()


@dataclass(frozen=True)
class Request:
    """What the signature of a request covers, as it arrived."""

    method: str
    host: str
    raw_path: str  # percent-encoded, as sent
    query: str  # raw query string
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


@dataclass(frozen=True)
class FormUpload:
    key: str  # the form's key, ${filename} replaced as S3 does
    size: int


class S3Auth:
    def __init__(
        self,
        credentials: Mapping[str, str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.credentials = dict(credentials)  # access key id -> secret
        self.clock = clock

    # -- signed requests ---------------------------------------------------------------

    def check_signed(self, request: Request) -> None:
        """A request signed in its Authorization header or its query string (presigned
        URL) by known credentials, in time; anything else is refused."""
        authorization = request.headers.get("authorization")
        if authorization:
            self._check_header(request, authorization)
        elif "X-Amz-Signature=" in request.query:
            self._check_query(request)
        else:
            raise S3Refusal(403, "AccessDenied", "Access Denied")  # no anonymous access

    def _check_header(self, request: Request, authorization: str) -> None:
        scheme, _, rest = authorization.partition(" ")
        if scheme != ALGORITHM:
            raise S3Refusal(400, "InvalidArgument", f"only {ALGORITHM} signatures are accepted")
        parts = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
        if not {"Credential", "SignedHeaders", "Signature"} <= parts.keys():
            raise S3Refusal(400, "AuthorizationHeaderMalformed", "the header is incomplete")
        amz_date = request.headers.get("x-amz-date", "")
        signed_at = _parse_amz_date(amz_date)
        if abs(self.clock() - signed_at) > MAX_SKEW:
            raise S3Refusal(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            )
        payload = request.headers.get("x-amz-content-sha256")
        if not payload:
            raise S3Refusal(
                400,
                "InvalidRequest",
                "Missing required header for this request: x-amz-content-sha256",
            )
        if _is_sha256(payload) and hashlib.sha256(request.body).hexdigest() != payload:
            raise S3Refusal(
                400,
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        signer = self._signer(parts["Credential"], S3SigV4Auth)
        unsigned = _aws_request(request, parts["SignedHeaders"], request.query, amz_date)
        self._compare(signer, unsigned, parts["Signature"])

    def _check_query(self, request: Request) -> None:
        params = dict(parse_qsl(request.query, keep_blank_values=True))
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise S3Refusal(400, "InvalidArgument", f"only {ALGORITHM} signatures are accepted")
        signed_at = _parse_amz_date(params.get("X-Amz-Date", ""))
        try:
            expires = int(params.get("X-Amz-Expires", ""))
        except ValueError:
            raise S3Refusal(400, "AuthorizationQueryParametersError", "X-Amz-Expires") from None
        if not 0 < expires <= MAX_PRESIGNED_SECONDS:
            raise S3Refusal(
                400,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be between 1 and 604800 seconds",
            )
        now = self.clock()
        if now > signed_at + timedelta(seconds=expires):
            raise S3Refusal(403, "AccessDenied", "Request has expired")
        if signed_at > now + MAX_SKEW:
            raise S3Refusal(403, "AccessDenied", "Request is not valid yet")
        signer = self._signer(params.get("X-Amz-Credential", ""), S3SigV4QueryAuth)
        query = "&".join(
            p for p in request.query.split("&") if not p.startswith("X-Amz-Signature=")
        )
        unsigned = _aws_request(
            request, params.get("X-Amz-SignedHeaders", "host"), query, params["X-Amz-Date"]
        )
        self._compare(signer, unsigned, params["X-Amz-Signature"])

    @staticmethod
    def _compare(signer: S3SigV4Auth, unsigned: AWSRequest, signature: str) -> None:
        canonical = signer.canonical_request(unsigned)
        expected = signer.signature(signer.string_to_sign(unsigned, canonical), unsigned)
        if not hmac.compare_digest(expected, signature):
            raise S3Refusal(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _signer(self, credential: str, kind: type[S3SigV4Auth]) -> S3SigV4Auth:
        """A signer for the credential scope `access-key/date/region/s3/aws4_request`."""
        try:
            access_key, _, region, service, terminal = credential.split("/")
        except ValueError:
            raise S3Refusal(400, "AuthorizationHeaderMalformed", "bad credential scope") from None
        if service != "s3" or terminal != "aws4_request":
            raise S3Refusal(400, "AuthorizationHeaderMalformed", "bad credential scope")
        secret = self.credentials.get(access_key)
        if secret is None:
            raise S3Refusal(
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        return kind(Credentials(access_key, secret), "s3", region)

    # -- browser uploads (presigned POST) ----------------------------------------------

    def check_form(
        self,
        bucket: str,
        fields: MultiDict[str, str],
        files: MultiDict[str, FileStorage],
        query: str,
    ) -> FormUpload:
        """A POST upload whose policy is signed by known credentials, unexpired, and met
        by every field sent (key, bucket, size ...); returns where it writes."""
        if query:
            raise S3Refusal(400, "InvalidArgument", "a form upload takes no query string")
        form = _single_values(fields)
        file = _the_file(files, form)
        if "policy" not in form:
            raise S3Refusal(403, "AccessDenied", "Access Denied")  # no anonymous uploads
        if form.get("x-amz-algorithm") != ALGORITHM:
            raise S3Refusal(400, "InvalidArgument", f"only {ALGORITHM} signatures are accepted")
        signer = self._signer(form.get("x-amz-credential", ""), S3SigV4Auth)
        unsigned = AWSRequest()
        unsigned.context["timestamp"] = form.get("x-amz-date", "")
        _parse_amz_date(unsigned.context["timestamp"])
        expected = signer.signature(form["policy"], unsigned)
        if not hmac.compare_digest(expected, form.get("x-amz-signature", "")):
            raise S3Refusal(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        policy = _policy(form["policy"])
        if self.clock() > _parse_expiration(policy.get("expiration")):
            raise S3Refusal(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        size = _size(file)
        covered = _check_conditions(policy.get("conditions"), {**form, "bucket": bucket}, size)
        extra = [
            name
            for name in form
            if name not in covered
            and name not in UNCONDITIONED_FIELDS
            and not name.startswith("x-ignore-")
        ]
        if extra:
            raise S3Refusal(
                403,
                "AccessDenied",
                f"Invalid according to Policy: Extra input fields: {', '.join(sorted(extra))}",
            )
        if "key" not in form:
            raise S3Refusal(400, "InvalidArgument", "Bucket POST must contain a field named 'key'.")
        filename = posixpath.basename((file.filename or "").replace("\\", "/"))
        return FormUpload(form["key"].replace("${filename}", filename), size)


def _aws_request(request: Request, signed_headers: str, query: str, amz_date: str) -> AWSRequest:
    """The request as botocore signed it: only the headers the signature names."""
    names = [name for name in signed_headers.lower().split(";") if name]
    headers = {name: request.headers.get(name, "") for name in names}
    url = f"http://{request.host}{request.raw_path}" + (f"?{query}" if query else "")
    unsigned = AWSRequest(method=request.method, url=url, headers=headers)
    unsigned.context["timestamp"] = amz_date
    return unsigned


def _parse_amz_date(value: str) -> datetime:
    try:
        return datetime.strptime(value, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise S3Refusal(
            403, "AccessDenied", "AWS authentication requires a valid x-amz-date"
        ) from None


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _single_values(fields: MultiDict[str, str]) -> dict[str, str]:
    """Form fields by lower-case name; a field sent twice is refused (which one counts
    would depend on the parser)."""
    form: dict[str, str] = {}
    for name, values in fields.lists():
        lower = name.lower()
        if lower in form or len(values) > 1:
            raise S3Refusal(400, "InvalidArgument", f"the field {name!r} is sent more than once")
        form[lower] = values[0]
    return form


def _the_file(files: MultiDict[str, FileStorage], form: dict[str, str]) -> FileStorage:
    uploads = list(files.items(multi=True))
    if len(uploads) != 1 or uploads[0][0] != "file" or "file" in form:
        raise S3Refusal(
            400, "InvalidArgument", "POST requires exactly one file upload per request."
        )
    return uploads[0][1]


def _size(file: FileStorage) -> int:
    file.stream.seek(0, 2)
    size = file.stream.tell()
    file.stream.seek(0)
    return size


def _policy(encoded: str) -> dict[str, Any]:
    try:
        policy = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise S3Refusal(
            400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON or base64."
        ) from None
    if not isinstance(policy, dict):
        raise S3Refusal(400, "InvalidPolicyDocument", "Invalid Policy: not a JSON object.")
    return policy


def _parse_expiration(value: Any) -> datetime:
    if not isinstance(value, str):
        raise S3Refusal(400, "InvalidPolicyDocument", "Invalid Policy: Policy missing expiration.")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise S3Refusal(
            400, "InvalidPolicyDocument", f"Invalid Policy: bad expiration {value!r}."
        ) from None


def _check_conditions(conditions: Any, values: dict[str, str], size: int) -> set[str]:
    """Check each condition against the form's values; returns the fields named."""
    if not isinstance(conditions, list):
        raise S3Refusal(400, "InvalidPolicyDocument", "Invalid Policy: no conditions list.")
    covered: set[str] = set()
    for condition in conditions:
        if isinstance(condition, dict):
            for name, expected in condition.items():
                _require(values, "eq", f"${name}", expected, condition)
                covered.add(name.lower())
        elif isinstance(condition, list) and len(condition) == 3:
            operator = str(condition[0]).lower()
            if operator == "content-length-range":
                _require_size(size, condition[1], condition[2])
            elif operator in ("eq", "starts-with") and str(condition[1]).startswith("$"):
                _require(values, operator, condition[1], condition[2], condition)
                covered.add(str(condition[1])[1:].lower())
            else:
                raise S3Refusal(
                    400, "InvalidPolicyDocument", f"Invalid Policy: bad condition {condition}."
                )
        else:
            raise S3Refusal(
                400, "InvalidPolicyDocument", f"Invalid Policy: bad condition {condition}."
            )
    return covered


def _require(values: dict[str, str], operator: str, name: str, expected: Any, said: Any) -> None:
    value = values.get(name[1:].lower())
    ok = value is not None and (
        value == str(expected) if operator == "eq" else value.startswith(str(expected))
    )
    if not ok:
        raise S3Refusal(
            403,
            "AccessDenied",
            f"Invalid according to Policy: Policy Condition failed: {json.dumps(said)}",
        )


def _require_size(size: int, low: Any, high: Any) -> None:
    try:
        low, high = int(low), int(high)
    except (TypeError, ValueError):
        raise S3Refusal(
            400, "InvalidPolicyDocument", "Invalid Policy: bad content-length-range."
        ) from None
    if size < low:
        raise S3Refusal(
            400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
        )
    if size > high:
        raise S3Refusal(
            400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
        )
