"""Prediction capture: a Kinesis Data Firehose stream (Direct PUT) that the predict function
writes what it served to, delivered as JSON Lines into the data bucket under
capture/{dataset}/{model}/date=.../ (dynamic partitioning on each record's fields)."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from gallop.layout import (
    CAPTURE_ERROR_PREFIX,
    CAPTURE_PARTITION_QUERY,
    CAPTURE_PREFIX,
    CAPTURE_ROOT,
)

# Dynamic partitioning needs a buffer of at least 64 MiB; a minute's interval bounds how
# late a captured row reaches S3 (and the monitor) when traffic is light.
BUFFER_MB = 64
BUFFER_SECONDS = 60
# How long Firehose retries a record it could not partition before it goes to the errors.
PARTITIONING_RETRY_SECONDS = 300


def capture_error_root() -> str:
    """The fixed part of CAPTURE_ERROR_PREFIX (before its first expression)."""
    return CAPTURE_ERROR_PREFIX.split("!{", 1)[0].split("/", 1)[0] + "/"


class Capture(Construct):
    def __init__(self, scope: Construct, id: str, *, data: s3.IBucket, key: kms.IKey) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.log_group = logs.LogGroup(self, "DeliveryLogs")
        stream_logs = logs.LogStream(self, "DeliveryErrors", log_group=self.log_group)
        self.role = iam.Role(
            self,
            "Role",
            description="gallop capture stream: delivers to capture/ of the data bucket",
            assumed_by=iam.ServicePrincipal(
                "firehose.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ),
        )
        # Exactly what an S3 destination needs (Firehose's documented policy), held to the
        # two prefixes it writes: objects, multipart uploads, and the bucket's location.
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[
                    data.arn_for_objects(f"{CAPTURE_ROOT}*"),
                    data.arn_for_objects(f"{capture_error_root()}*"),
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                resources=[data.bucket_arn],
            )
        )
        # The bucket's key, only through S3 (the objects' encryption).
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"s3.{stack.region}.{stack.url_suffix}"}
                },
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:PutLogEvents"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name=(
                            f"{self.log_group.log_group_name}:log-stream:"
                            f"{stream_logs.log_stream_name}"
                        ),
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        self.stream = firehose.CfnDeliveryStream(
            self,
            "Stream",
            delivery_stream_type="DirectPut",
            # At rest inside Firehose, with the key the bucket uses.
            delivery_stream_encryption_configuration_input=firehose.CfnDeliveryStream.DeliveryStreamEncryptionConfigurationInputProperty(
                key_type="CUSTOMER_MANAGED_CMK", key_arn=key.key_arn
            ),
            extended_s3_destination_configuration=firehose.CfnDeliveryStream.ExtendedS3DestinationConfigurationProperty(
                bucket_arn=data.bucket_arn,
                role_arn=self.role.role_arn,
                prefix=CAPTURE_PREFIX,
                error_output_prefix=CAPTURE_ERROR_PREFIX,
                buffering_hints=firehose.CfnDeliveryStream.BufferingHintsProperty(
                    size_in_m_bs=BUFFER_MB, interval_in_seconds=BUFFER_SECONDS
                ),
                # Uncompressed: the records are JSON Lines that gallop.monitoring.capture
                # reads as they are, the same bytes the local stack (moto) delivers; the
                # bucket's lifecycle, not compression, bounds what capture costs to keep.
                compression_format="UNCOMPRESSED",
                encryption_configuration=firehose.CfnDeliveryStream.EncryptionConfigurationProperty(
                    kms_encryption_config=firehose.CfnDeliveryStream.KMSEncryptionConfigProperty(
                        awskms_key_arn=key.key_arn
                    )
                ),
                dynamic_partitioning_configuration=firehose.CfnDeliveryStream.DynamicPartitioningConfigurationProperty(
                    enabled=True,
                    retry_options=firehose.CfnDeliveryStream.RetryOptionsProperty(
                        duration_in_seconds=PARTITIONING_RETRY_SECONDS
                    ),
                ),
                # Each record is one "\n"-terminated JSON object already: no delimiter
                # processor, only the partition keys taken from its fields.
                processing_configuration=firehose.CfnDeliveryStream.ProcessingConfigurationProperty(
                    enabled=True,
                    processors=[
                        firehose.CfnDeliveryStream.ProcessorProperty(
                            type="MetadataExtraction",
                            parameters=[
                                firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                    parameter_name="MetadataExtractionQuery",
                                    parameter_value=CAPTURE_PARTITION_QUERY,
                                ),
                                firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                    parameter_name="JsonParsingEngine",
                                    parameter_value="JQ-1.6",
                                ),
                            ],
                        )
                    ],
                ),
                cloud_watch_logging_options=firehose.CfnDeliveryStream.CloudWatchLoggingOptionsProperty(
                    enabled=True,
                    log_group_name=self.log_group.log_group_name,
                    log_stream_name=stream_logs.log_stream_name,
                ),
            ),
        )
        # The role's policy must exist before Firehose first delivers with it.
        self.stream.node.add_dependency(self.role)

    @property
    def stream_name(self) -> str:
        return self.stream.ref

    @property
    def stream_arn(self) -> str:
        return self.stream.attr_arn

    def grant_put_records(self, grantee: iam.IGrantable) -> iam.Grant:
        """PutRecordBatch on this stream only: what gallop.monitoring.capture calls."""
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["firehose:PutRecordBatch"], resource_arns=[self.stream_arn]
        )
