"""What differs between deployment stages, in one place: a typed setting per stage, and
the deployment `cdk deploy -c stage=...` asks for (where, and who hears the alarms)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aws_cdk import RemovalPolicy

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
    # The monitor function's schedule (drift and live quality of every serving model).
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

ACCOUNT = re.compile(r"^[0-9]{12}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")


@dataclass(frozen=True)
class Deployment:
    """One stage in one account and region, and the alarm topic's subscribers."""

    stage: Stage
    account: str
    region: str
    alarm_emails: tuple[str, ...] = ()
    alarm_webhooks: tuple[str, ...] = ()

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
