"""Create the local stand-ins for what the CDK stack deploys: same names, same wiring.

The data bucket notifies the ingest queue of ObjectCreated under raw/ only (the
handler writes elsewhere, so it never triggers itself); ingest announces each VALID
version on the features queue. Each queue dead-letters a message after three failed
receives. The capture stream (Firehose) delivers what the predict path served to the
data bucket, partitioned by dataset, model and day as on AWS (gallop.local.firehose).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from gallop.layout import (
    CAPTURE_ERROR_PREFIX,
    CAPTURE_PARTITION_QUERY,
    CAPTURE_PREFIX,
    RAW_PREFIX,
)
from gallop.settings import MAX_RECEIVE_COUNT


@dataclass(frozen=True)
class Queue:
    url: str
    arn: str


@dataclass(frozen=True)
class Resources:
    bucket: str
    ingest: Queue
    ingest_dlq: Queue
    features: Queue
    features_dlq: Queue


def create_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def create_queue(sqs: Any, name: str, attributes: dict[str, str]) -> Queue:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return Queue(url, arn)


def create_queue_with_dlq(sqs: Any, name: str, visibility_timeout: int) -> tuple[Queue, Queue]:
    """A work queue that dead-letters a message after MAX_RECEIVE_COUNT failed receives."""
    dlq = create_queue(sqs, name + "-dlq", {"MessageRetentionPeriod": str(14 * 24 * 3600)})
    queue = create_queue(
        sqs,
        name,
        {
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq.arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
            ),
        },
    )
    return queue, dlq


def notify_on_raw_uploads(s3: Any, sqs: Any, bucket: str, queue: Queue) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue.arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue.url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue.arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": RAW_PREFIX}]}},
                }
            ]
        },
    )


# Firehose wants a role to write to S3; moto checks none, the ARN only has to look right.
LOCAL_FIREHOSE_ROLE = "arn:aws:iam::123456789012:role/gallop-capture-local"


def create_capture_stream(firehose: Any, name: str, bucket: str) -> str:
    """The capture delivery stream, configured as the CDK stack configures it (dynamic
    partitioning by the record's dataset and model, a day folder, an error prefix);
    returns its ARN. Kept if it exists."""
    try:
        return str(
            firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"][
                "DeliveryStreamARN"
            ]
        )
    except firehose.exceptions.ResourceNotFoundException:
        pass
    reply = firehose.create_delivery_stream(
        DeliveryStreamName=name,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": LOCAL_FIREHOSE_ROLE,
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": CAPTURE_PREFIX,
            "ErrorOutputPrefix": CAPTURE_ERROR_PREFIX,
            "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 60},
            "DynamicPartitioningConfiguration": {"Enabled": True},
            "ProcessingConfiguration": {
                "Enabled": True,
                "Processors": [
                    {
                        "Type": "MetadataExtraction",
                        "Parameters": [
                            {
                                "ParameterName": "MetadataExtractionQuery",
                                "ParameterValue": CAPTURE_PARTITION_QUERY,
                            },
                            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
                        ],
                    }
                ],
            },
        },
    )
    return str(reply["DeliveryStreamARN"])
