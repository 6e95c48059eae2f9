"""One settings model for every function, job and command.

Resource names reach Lambda code as environment variables set by CDK; locally the
same variables are set by the local stack. An explicit argument wins over the
environment. Names of the variables are the constants below, so that the
infrastructure and the code cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GALLOP_"

# Variables every deployed function needs (the CDK stack sets exactly these).
ENV_DATA_BUCKET = "GALLOP_DATA_BUCKET"
ENV_DATABASE_URL = "DATABASE_URL"
ENV_DATABASE_HOST = "GALLOP_DATABASE_HOST"
ENV_DATABASE_USER = "GALLOP_DATABASE_USER"
ENV_DATABASE_NAME = "GALLOP_DATABASE_NAME"
ENV_DATABASE_IAM_AUTH = "GALLOP_DATABASE_IAM_AUTH"
ENV_API_KEYS = "GALLOP_API_KEYS"
ENV_INGEST_QUEUE_URL = "GALLOP_INGEST_QUEUE_URL"
ENV_FEATURES_QUEUE_URL = "GALLOP_FEATURES_QUEUE_URL"
ENV_MONITOR_QUEUE_URL = "GALLOP_MONITOR_QUEUE_URL"
ENV_AWS_ENDPOINT_URL = "GALLOP_AWS_ENDPOINT_URL"
ENV_TRAINING_LAUNCHER = "GALLOP_TRAINING_LAUNCHER"
ENV_CODE_VERSION = "GALLOP_CODE_VERSION"
ENV_CAPTURE_STREAM = "GALLOP_CAPTURE_STREAM"

# What each deployed function must be configured with: its handler checks these at cold
# start, and the CDK stack sets the variables (a test ties the two together).
# Needed by a deployed function (training through Step Functions), not by the local stack.
DEPLOYED_ONLY = ("alarm_topic_arn", "renewal_state_machine_arn")
FUNCTION_SETTINGS: dict[str, tuple[str, ...]] = {
    "api": (
        "database",
        "data_bucket",
        "api_key_source",
        "artifacts_bucket",
        "training_launcher",
        "monitor_function_name",
    ),
    "migrate": ("database", "artifacts_bucket"),
    # A retrain starts a run as the API does; approval requests are announced on the
    # alarm topic and waited on by the renewal state machine.
    "monitor": (
        "database",
        "data_bucket",
        "artifacts_bucket",
        "training_launcher",
        "alarm_topic_arn",
        "renewal_state_machine_arn",
    ),
    "ingest": ("database", "data_bucket", "features_queue_url", "monitor_queue_url"),
    "features": ("database", "data_bucket"),
    "training": ("database", "artifacts_bucket"),
    "predict": ("data_bucket", "artifacts_bucket", "api_key_source", "capture_stream"),
}

# What runs launched on Step Functions need, on top of the launcher's name. The code
# version is set explicitly there: a deployed function has no training sources to hash.
STEPFUNCTIONS_SETTINGS = (
    "training_state_machine_arn",
    "training_image",
    "sagemaker_role_arn",
    "code_version",
)

# The most characters of a caller's text (an id, a name, a value) said back in a reply or
# a log line: an error must not grow with the request.
MAX_ECHO_CHARS = 80

# What an API key may do (gallop.api.auth checks it): every key may read; writers change
# datasets, runs and aliases; approvers decide what becomes champion.
Role = Literal["reader", "writer", "approver"]
ROLES: tuple[Role, ...] = get_args(Role)
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# On AWS a key's roles are its tag ("reader+writer"); a key without it may only read.
ROLES_TAG = "gallop:roles"

# Marks a database URL whose connections authenticate with IAM tokens (value: region).
IAM_AUTH_QUERY = "gallop_iam_region"

# Deliveries of a queue message before it is dead-lettered (the CDK stack and the local
# stack); ingest settles an upload that failed for an unknown reason on the last one.
MAX_RECEIVE_COUNT = 3


class Settings(BaseSettings):
    """Everything configurable, with local defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    state_dir: Path = Field(
        default=Path.home() / ".gallop",
        description="Local stack state: S3 objects and the SQLite metadata file.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL; defaults to SQLite under state_dir.",
    )
    database_host: str | None = Field(
        default=None, description="On AWS: the RDS Proxy endpoint (with database_iam_auth)."
    )
    database_port: int = 5432
    database_user: str | None = None
    database_name: str = "gallop"
    database_iam_auth: bool = Field(
        default=False,
        description="Authenticate with a short-lived IAM token per connection (RDS Proxy): "
        "no password in the function, and secret rotation never breaks a warm container.",
    )
    database_sslmode: str = "require"
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(
        default=None, description="S3/SQS endpoint override (the local moto server)."
    )
    data_bucket: str = "gallop-data"
    ingest_queue_name: str = "gallop-ingest"
    ingest_queue_url: str | None = None
    features_queue_name: str = "gallop-features"
    features_queue_url: str | None = Field(
        default=None, description="Where ingest announces new VALID versions."
    )
    monitor_queue_name: str = "gallop-monitor"
    monitor_queue_url: str | None = Field(
        default=None,
        description="Where ingest announces new VALID versions to the monitor too: their "
        "results are what captured predictions are scored against.",
    )
    monitor_function_name: str | None = Field(
        default=None,
        description="On AWS: the monitor function the API invokes to check now; unset, "
        "the API runs the check itself (the local stack).",
    )
    api_keys: str = Field(
        default="",
        description="The keys accepted in the x-api-key header, comma-separated: each "
        "`name:role+role:secret` (roles: reader, writer, approver; every key may read), or "
        "a bare secret, named key-N by its position and given every role (as before roles).",
    )
    api_key_source: Literal["settings", "gateway"] = Field(
        default="settings",
        description="settings: check x-api-key against api_keys. gateway: API Gateway "
        "checked the key (REST API, apiKeyRequired); the app verifies it did.",
    )
    artifacts_bucket: str = Field(
        default="gallop-artifacts", description="Training outputs and registered models."
    )
    training_launcher: Literal["local", "stepfunctions"] = Field(
        default="local",
        description="local: runs train in a thread of the API process (gallop serve). "
        "stepfunctions: each run is an execution of the training state machine.",
    )
    training_state_machine_arn: str | None = None
    training_image: str | None = Field(
        default=None, description="ECR image the SageMaker training jobs run."
    )
    sagemaker_role_arn: str | None = Field(
        default=None, description="Role the SageMaker training jobs assume."
    )
    training_kms_key_id: str | None = Field(
        default=None, description="KMS key for the training jobs' output (optional)."
    )
    code_version: str | None = Field(
        default=None,
        description="Version of the training code (part of every run id); by default a hash "
        "of the training sources beside this package.",
    )
    report_url_expiry_seconds: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    # Monitoring (issue #13): what the monitor's alarms, the API and the monitoring page judge by
    monitor_window_days: int = Field(
        default=7, gt=0, description="Days of live quality the quality alarm looks back over."
    )
    quality_margin: float = Field(
        default=0.05,
        gt=0,
        description="Live quality this much worse than the training figure (relative: 0.05 "
        "is 5 % worse) over the window raises the live-quality alarm.",
    )
    drift_psi_threshold: float = Field(
        default=0.25,
        gt=0,
        description="A feature (or the score) drifted when its PSI against the model's "
        "reference deciles is past this (0.1 is a moderate shift, 0.25 a large one).",
    )
    drift_ks_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Family-wise significance of the KS tests of one drift check: each is "
        "flagged below drift_ks_alpha / the number of tests (Bonferroni).",
    )
    monitor_min_predictions: int = Field(
        default=5000,
        gt=0,
        description="A scheduled drift check runs for a model once it has served this many "
        "predictions since its last check (`gallop monitor` checks at once).",
    )
    drift_min_rows: int = Field(
        default=1000,
        gt=0,
        description="Captured rows a drift check needs in its window: on fewer, PSI and KS "
        "measure the sample's noise (20 rows flag every feature), so drift is not checked.",
    )
    monitor_interval_seconds: float = Field(
        default=300,
        ge=0,
        description="gallop serve: how often the local stack runs the monitor (0: never), "
        "as the EventBridge schedule runs it on AWS.",
    )
    alias_ttl_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a warm container trusts its alias -> model lookup before "
        "asking the database again: a promotion reaches every container within it.",
    )
    capture_stream: str = Field(
        default="",
        description="Firehose delivery stream the predict path captures what it served to "
        "(gallop.monitoring.capture); empty: no capture.",
    )
    capture_sample: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of requests captured, chosen by a stable hash of the request's "
        "first group id (else its correlation id): a race is captured whole or not at all.",
    )
    # Renewal (issue #14): comparing the challenger, approvals, retraining
    renewal_min_races: int = Field(
        default=300,
        gt=0,
        description="Paired races (rows, ungrouped) the champion/challenger comparison needs "
        "before it recommends anything but 'not enough races yet'.",
    )
    approval_timeout_hours: float = Field(
        default=72,
        gt=0,
        description="An approval request not decided within this many hours expires: the "
        "champion stays.",
    )
    alarm_topic_arn: str | None = Field(
        default=None,
        description="SNS topic approval requests (and retrains) are announced on; unset: "
        "they are logged (the local stack).",
    )
    renewal_state_machine_arn: str | None = Field(
        default=None,
        description="On AWS: the renewal state machine an approval request starts (it waits "
        "on a task token until the request is decided or times out); unset: the request "
        "lives in the database alone.",
    )
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(
        default=256 * 1024,
        gt=0,
        description="The largest request body a route takes (a dataset spec, a run): 413 "
        "past it, before more is read. Files go to S3 by presigned POST, not through here.",
    )
    max_rows_body_bytes: int = Field(
        default=6 * 1024 * 1024,
        gt=0,
        description="The same for the routes that take rows (predict, explain, race-card "
        "features; up to 1,000 rows): Lambda's payload limit.",
    )
    upload_url_expiry_seconds: int = Field(default=900, gt=0, le=7 * 24 * 3600)
    run_max_boost_rounds: int = Field(
        default=10_000,
        gt=0,
        description="The most boosting rounds a training run may ask for (422 past it).",
    )
    run_time_limit_default: float = Field(
        default=4 * 3600,
        ge=1,
        description="Seconds a training run that sets no time_limit may take: past them "
        "its jobs are stopped and it FAILS.",
    )
    run_time_limit_max: float = Field(
        default=86_400, ge=1, description="The longest time_limit a run may ask for (422)."
    )
    report_max_rows: int = Field(
        default=20, gt=0, description="Row numbers quoted per problem in a validation report."
    )
    # Bounds on the work one upload may cause, checked while reading, before a table is built.
    max_columns: int = Field(default=10_000, gt=0, description="Columns an upload may have.")
    max_cell_chars: int = Field(
        default=131_072,
        gt=0,
        description="Characters in one cell (the csv module's own limit, so nothing that "
        "was read before is refused now).",
    )
    max_json_depth: int = Field(
        default=32,
        gt=0,
        description="A JSON Lines record is parsed only when it cannot nest deeper than this "
        "(gallop reads flat objects; deeper ones are refused unparsed).",
    )
    max_decompressed_bytes: int | None = Field(
        default=None,
        gt=0,
        description="What a .gz upload may inflate to; by default 4 x max_upload_bytes.",
    )
    max_validation_memory_mb: int = Field(
        default=1536,
        gt=0,
        description="Memory the table of one upload may need while it is validated, estimated "
        "from its rows x columns before it is built (the ingest function has 3008 MB).",
    )

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _default_decompressed_limit(self) -> Settings:
        if self.max_decompressed_bytes is None:
            self.max_decompressed_bytes = 4 * self.max_upload_bytes
        return self

    @model_validator(mode="after")
    def _check_api_keys(self) -> Settings:
        parse_api_keys(self.api_keys)  # at start: a bad entry must not wait for a request
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        if self.database_iam_auth and self.database_host and self.database_user:
            # The engine adds a fresh IAM token as the password of every new connection.
            return (
                f"postgresql+psycopg://{self.database_user}@{self.database_host}:"
                f"{self.database_port}/{self.database_name}?sslmode={self.database_sslmode}"
                f"&{IAM_AUTH_QUERY}={self.aws_region}"
            )
        return f"sqlite:///{self.state_dir / 'gallop.db'}"

    @property
    def has_database(self) -> bool:
        """Configured explicitly (deployed functions must be; SQLite is for local use)."""
        return bool(
            self.database_url
            or (self.database_iam_auth and self.database_host and self.database_user)
        )

    def require_for(self, function: str) -> Settings:
        return self.require(*FUNCTION_SETTINGS[function])

    def require(self, *fields: str) -> Settings:
        """Fail at start-up, naming the variables, when a deployed function lacks them.
        'database' is satisfied by DATABASE_URL, or by IAM authentication to a host."""
        missing = [name for f in fields for name in self._missing(f)]
        if missing:
            raise MissingSettings(f"gallop is not configured: set {', '.join(missing)}")
        return self

    def _missing(self, field: str) -> list[str]:
        if field == "training_launcher":  # local needs nothing more; Step Functions does
            if self.training_launcher == "local":
                return []
            return [
                f"{env_name(f)} (for {ENV_TRAINING_LAUNCHER}=stepfunctions)"
                for f in STEPFUNCTIONS_SETTINGS
                if not getattr(self, f)
            ]
        if field == "monitor_function_name":  # unset: the API checks itself, as locally
            return []
        if field in DEPLOYED_ONLY and self.training_launcher == "local":
            return []  # the local stack logs announcements and keeps approvals in the database
        return [] if self._configured(field) else [env_name(field)]

    def _configured(self, field: str) -> bool:
        if field == "database":
            return self.has_database
        if field == "api_key_source":  # keys to check, or the gateway checks them
            return self.api_key_source == "gateway" or bool(self.api_key_entries)
        return bool(getattr(self, field))

    @property
    def api_key_entries(self) -> tuple[ApiKey, ...]:
        return parse_api_keys(self.api_keys)


class MissingSettings(RuntimeError):
    pass


class InvalidSettings(RuntimeError):
    """A setting that cannot be used as given. Not a ValueError on purpose: pydantic would
    wrap that in an error quoting the input, and api_keys holds secrets."""


@dataclass(frozen=True)
class ApiKey:
    """One entry of api_keys."""

    name: str
    roles: frozenset[str]
    secret: str = field(repr=False)


def api_key_entry(name: str, roles: str, secret: str) -> str:
    """The api_keys entry of a named key (roles: "writer", "reader+writer")."""
    return f"{name}:{roles}:{secret}"


@lru_cache(maxsize=16)
def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """The entries of an api_keys setting. Errors name the entry (its position, its name),
    never its secret."""
    keys: list[ApiKey] = []
    entries = [e.strip() for e in text.split(",") if e.strip()]
    for position, entry in enumerate(entries, start=1):
        if ":" not in entry:  # a bare secret, as before roles: every role
            keys.append(ApiKey(f"key-{position}", frozenset(ROLES), entry))
            continue
        parts = entry.split(":", 2)
        if len(parts) < 3:
            raise InvalidSettings(
                f"GALLOP_API_KEYS: entry {position} is neither a bare key nor name:role+role:secret"
            )
        name, roles, secret = (p.strip() for p in parts)
        if not KEY_NAME.fullmatch(name):
            raise InvalidSettings(
                f"GALLOP_API_KEYS: entry {position} needs a name (1 to 64 letters, digits "
                "or . _ @ -, from a letter or digit)"
            )
        given = [r.strip() for r in roles.split("+")]
        if given == [""]:
            raise InvalidSettings(
                f"GALLOP_API_KEYS: key {name!r} names no role (roles: {', '.join(ROLES)})"
            )
        unknown = [r for r in given if r not in ROLES]
        if unknown:
            raise InvalidSettings(
                f"GALLOP_API_KEYS: key {name!r} has unknown role "
                f"{unknown[0][:MAX_ECHO_CHARS]!r} (roles: {', '.join(ROLES)})"
            )
        if not secret:
            raise InvalidSettings(f"GALLOP_API_KEYS: key {name!r} has no secret")
        keys.append(ApiKey(name, frozenset({"reader", *given}), secret))
    _check_unique(keys)
    return tuple(keys)


def _check_unique(keys: list[ApiKey]) -> None:
    # A name is who acted in the alias history; a secret must say which key it is.
    names: set[str] = set()
    secrets: dict[str, str] = {}
    for key in keys:
        if key.name in names:
            raise InvalidSettings(f"GALLOP_API_KEYS: two keys are named {key.name!r}")
        if key.secret in secrets:
            raise InvalidSettings(
                f"GALLOP_API_KEYS: keys {secrets[key.secret]!r} and {key.name!r} have the "
                "same secret"
            )
        names.add(key.name)
        secrets[key.secret] = key.name


def env_name(field: str) -> str:
    if field == "database":
        return (
            f"{ENV_DATABASE_URL} (or {ENV_DATABASE_HOST}, {ENV_DATABASE_USER} and "
            f"{ENV_DATABASE_IAM_AUTH}=true)"
        )
    if field == "api_key_source":
        return "GALLOP_API_KEYS (or GALLOP_API_KEY_SOURCE=gateway)"
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


def normalise_database_url(url: str) -> str:
    """Accept plain postgres:// URLs (as Heroku, RDS docs and psql write them)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
