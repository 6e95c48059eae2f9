"""Buckets: data (uploads, curated, features, quarantine, unclaimed) and artifacts
(models)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gallop.layout import (
    CAPTURE_ERRORS_ROOT,
    CAPTURE_ROOT,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    UNCLAIMED_PREFIX,
)
from infra.stages import CAPTURE_EXPIRY_DAYS, RAW_EXPIRY_DAYS


class Storage(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        key: kms.IKey,
        removal_policy: RemovalPolicy,
        unclaimed_expiry_days: int,
    ) -> None:
        super().__init__(scope, id)
        self.removal_policy = removal_policy
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # Server access logs can only be delivered to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            **self._removal(),
        )
        self.data = self._bucket(
            "Data",
            key,
            "data/",
            [
                # Raw uploads are kept as curated Parquet once ingested; quarantine and
                # unclaimed uploads (no dataset, or a key of the wrong shape) are for a
                # person to look at, then they go.
                s3.LifecycleRule(prefix=RAW_PREFIX, expiration=Duration.days(RAW_EXPIRY_DAYS)),
                s3.LifecycleRule(prefix=QUARANTINE_PREFIX, expiration=Duration.days(90)),
                s3.LifecycleRule(
                    prefix=UNCLAIMED_PREFIX, expiration=Duration.days(unclaimed_expiry_days)
                ),
                # What the models served: a year of it, and the same season again, for
                # drift and live quality over time; records Firehose could not partition
                # are for a person to look at.
                s3.LifecycleRule(
                    prefix=CAPTURE_ROOT, expiration=Duration.days(CAPTURE_EXPIRY_DAYS)
                ),
                s3.LifecycleRule(prefix=CAPTURE_ERRORS_ROOT, expiration=Duration.days(90)),
                s3.LifecycleRule(noncurrent_version_expiration=Duration.days(30)),
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
        )
        # Model artifacts are kept: a run's model must stay reproducible and servable.
        self.artifacts = self._bucket(
            "Artifacts",
            key,
            "artifacts/",
            [s3.LifecycleRule(abort_incomplete_multipart_upload_after=Duration.days(1))],
        )

    def _bucket(
        self, id: str, key: kms.IKey, log_prefix: str, rules: list[s3.LifecycleRule]
    ) -> s3.Bucket:
        return s3.Bucket(
            self,
            id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=rules,
            **self._removal(),
        )

    def _removal(self) -> dict[str, object]:
        """A bucket deleted with its stack is emptied first (CloudFormation cannot delete
        one that holds objects); a kept one is left as it is."""
        return {
            "removal_policy": self.removal_policy,
            "auto_delete_objects": self.removal_policy == RemovalPolicy.DESTROY,
        }
