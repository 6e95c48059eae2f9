"""What differs between deployment stages, in one place: a typed setting per stage, and
the deployment `cdk deploy -c stage=...` asks for (where, and who hears the alarms)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from aws_cdk import RemovalPolicy

from gallop.settings import KEY_NAME, ROLES

# How long raw uploads are kept (infra.storage): an unclaimed upload, which a person must
# look at, is kept at least as long.
RAW_EXPIRY_DAYS = 30
CAPTURE_EXPIRY_DAYS = 400  # captured predictions under capture/


class DeploymentRefused(ValueError):
    """The app will not synthesise a stack for this context; the message says what to pass."""


@dataclass(frozen=True)
class Stage:
    name: str
    nat_gateways: int
    database_readers: int
    database_min_acu: float
    database_max_acu: float
    # One of CloudWatch Logs' retention periods, for every log group of the stack.
    log_retention_days: int
    # Reserved concurrency: a cap on what a burst costs, and capacity no other function
    # of the account can take. The account keeps 100 unreserved (Lambda's minimum).
    api_concurrency: int
    predict_concurrency: int
    # Buckets, keys and the database: DESTROY deletes them with the stack (their
    # objects too); RETAIN keeps them, and a final snapshot of the database.
    removal_policy: RemovalPolicy
    unclaimed_expiry_days: int
    # Alarms that reach nobody are not monitoring: such a stage refuses to deploy without
    # an e-mail or webhook subscriber.
    needs_alarm_subscriber: bool
    # The monitor function's schedule (drift and live quality of every serving model), and
    # the finest retraining schedule: policies' every_hours are checked on each run.
    monitor_every_minutes: int = 60
    # Live quality this much worse than the training figure alarms (LiveQualityDrop is the
    # relative drop: 0.05 is 5 % worse), as gallop.settings' quality_margin says locally.
    quality_margin: float = 0.05
    # A work queue whose oldest message waited this long is backed up: uploads wait.
    queue_age_alarm_minutes: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.quality_margin < 1:
            raise DeploymentRefused(
                f"stage {self.name}: quality_margin {self.quality_margin} is not a share in (0, 1)"
            )
        if self.monitor_every_minutes < 1:
            raise DeploymentRefused(
                f"stage {self.name}: the monitor must run every minute or less often"
            )
        if self.unclaimed_expiry_days < RAW_EXPIRY_DAYS:
            raise DeploymentRefused(
                f"stage {self.name}: unclaimed uploads would expire after "
                f"{self.unclaimed_expiry_days} days, before raw uploads ({RAW_EXPIRY_DAYS})"
            )

    @property
    def destroys_data(self) -> bool:
        return self.removal_policy == RemovalPolicy.DESTROY


STAGES = {
    "dev": Stage(
        name="dev",
        nat_gateways=1,
        database_readers=0,
        database_min_acu=0.5,
        database_max_acu=2,
        log_retention_days=30,
        api_concurrency=5,
        predict_concurrency=10,
        removal_policy=RemovalPolicy.DESTROY,
        unclaimed_expiry_days=30,
        needs_alarm_subscriber=False,
    ),
    "prod": Stage(
        name="prod",
        # One per AZ: losing an AZ's NAT must not cut the other AZ's functions off AWS APIs.
        nat_gateways=2,
        # A reader in the other AZ: failover without waiting for a new writer.
        database_readers=1,
        database_min_acu=1,
        database_max_acu=8,
        log_retention_days=365,
        api_concurrency=50,
        predict_concurrency=200,
        removal_policy=RemovalPolicy.RETAIN,
        unclaimed_expiry_days=90,
        needs_alarm_subscriber=True,
        queue_age_alarm_minutes=15,
    ),
}

# The first key, made with the stack, can do everything, as every key could before roles
# (a key's roles are its ROLES_TAG; its name is the actor of the history lines it writes).
FIRST_KEY_ROLES = "+".join(ROLES)
# How long an approval request waits for a person before it expires (the renewal state
# machine's wait, and the request's expires_at: gallop.settings' approval_timeout_hours).
APPROVAL_TIMEOUT_HOURS = 72.0
# A Standard workflow runs at most a year; the wait leaves an hour for what follows it.
MAX_APPROVAL_TIMEOUT_HOURS = 365 * 24 - 1

ACCOUNT = re.compile(r"^[0-9]{12}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")


@dataclass(frozen=True)
class KeySpec:
    """An API key the stack makes besides the first: its name and its roles."""

    name: str
    roles: str  # "reader+approver"

    def __post_init__(self) -> None:
        if not KEY_NAME.fullmatch(self.name):
            raise DeploymentRefused(
                f"api key name {self.name!r}: letters, digits and . _ @ -, at most 64"
            )
        unknown = set(self.roles.split("+")) - set(ROLES)
        if not self.roles or unknown:
            raise DeploymentRefused(
                f"api key {self.name!r}: roles {self.roles!r} are not "
                f"{'+'.join(ROLES)} or some of them"
            )


@dataclass(frozen=True)
class Deployment:
    """One stage in one account and region, the alarm topic's subscribers, the API keys
    made besides the first, and how long approval requests wait."""

    stage: Stage
    account: str
    region: str
    alarm_emails: tuple[str, ...] = ()
    alarm_webhooks: tuple[str, ...] = ()
    api_keys: tuple[KeySpec, ...] = ()
    approval_timeout_hours: float = APPROVAL_TIMEOUT_HOURS

    def __post_init__(self) -> None:
        if not ACCOUNT.match(self.account):
            raise DeploymentRefused(f"account {self.account!r} is not a 12-digit AWS account id")
        if not REGION.match(self.region):
            raise DeploymentRefused(f"region {self.region!r} is not an AWS region name")
        for email in self.alarm_emails:
            if not EMAIL.match(email):
                raise DeploymentRefused(f"alarm_email {email!r} is not an e-mail address")
        for url in self.alarm_webhooks:
            if not url.startswith("https://") or len(url) <= len("https://"):
                raise DeploymentRefused(f"alarm_webhook {url!r} must be an https:// URL")
        names = [key.name for key in self.api_keys]
        if len(set(names)) < len(names):
            raise DeploymentRefused(f"api_keys name a key twice: {', '.join(names)}")
        if not 0 < self.approval_timeout_hours <= MAX_APPROVAL_TIMEOUT_HOURS:
            raise DeploymentRefused(
                f"approval_timeout_hours {self.approval_timeout_hours} is not in "
                f"(0, {MAX_APPROVAL_TIMEOUT_HOURS}]"
            )
        if self.stage.needs_alarm_subscriber and not (self.alarm_emails or self.alarm_webhooks):
            raise DeploymentRefused(
                f"stage {self.stage.name} needs someone to hear its alarms: pass "
                "-c alarm_email=ops@example.com and/or -c alarm_webhook=https://... "
                "(several: comma-separated)"
            )

    @property
    def stack_name(self) -> str:
        return f"Gallop-{self.stage.name}"


def stage_named(name: str | None) -> Stage:
    if not name:
        raise DeploymentRefused(f"no stage given: pass -c stage=<{'|'.join(STAGES)}>")
    if name not in STAGES:
        raise DeploymentRefused(f"unknown stage {name!r}: pass -c stage=<{'|'.join(STAGES)}>")
    return STAGES[name]


def listed(value: str | None) -> tuple[str, ...]:
    """A context value of comma-separated items (-c alarm_email=a@x,b@x)."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def api_keys(value: object) -> tuple[KeySpec, ...]:
    """The context's api_keys: a list of {"name", "roles"} (from cdk.json), or the same as
    JSON text (-c api_keys='[{"name": "ops", "roles": "reader+approver"}]')."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DeploymentRefused(f"api_keys is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(
        isinstance(k, dict) and set(k) == {"name", "roles"} for k in value
    ):
        raise DeploymentRefused(
            'api_keys must be a list of {"name": ..., "roles": "reader+writer"} objects'
        )
    return tuple(KeySpec(name=str(k["name"]), roles=str(k["roles"])) for k in value)
