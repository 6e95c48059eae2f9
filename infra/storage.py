"""Buckets: data (uploads, curated, features, quarantine) and artifacts (models)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gallop.settings import QUARANTINE_PREFIX, RAW_PREFIX


class Storage(Construct):
    def __init__(self, scope: Construct, id: str, *, key: kms.IKey) -> None:
        super().__init__(scope, id)
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
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.data = self._bucket(
            "Data",
            key,
            "data/",
            [
                # Raw uploads are kept as curated Parquet once ingested; quarantine is for
                # a person to look at, then it goes.
                s3.LifecycleRule(prefix=RAW_PREFIX, expiration=Duration.days(30)),
                s3.LifecycleRule(prefix=QUARANTINE_PREFIX, expiration=Duration.days(90)),
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
            removal_policy=RemovalPolicy.RETAIN,
        )
