"""cdk-nag suppressions, each scoped as narrowly as cdk-nag allows and with its reason.

Everything not listed here must pass AwsSolutions and Serverless checks (a test asserts
zero unsuppressed findings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo

if TYPE_CHECKING:
    from infra.stack import GallopStack

MANAGED = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"

IAM = [
    NagPackSuppression(
        id="AwsSolutions-IAM4",
        reason="AWS managed service-role policies that grant only what every Lambda (logs), "
        "VPC Lambda (network interfaces, which have no resource-level permissions) and API "
        "Gateway account logging need.",
        applies_to=[
            MANAGED + "AWSLambdaBasicExecutionRole",
            MANAGED + "AWSLambdaVPCAccessExecutionRole",
            MANAGED + "AmazonAPIGatewayPushToCloudWatchLogs",
        ],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="Object keys carry dataset, version and upload ids that are not known at "
        "deploy time: each S3 grant covers object actions under one prefix of the data "
        "bucket (raw/, curated/, quarantine/ or features/), and no other bucket.",
        applies_to=[
            "Action::s3:Abort*",
            "Action::s3:DeleteObject*",
            "Action::s3:GetBucket*",
            "Action::s3:GetObject*",
            "Action::s3:List*",
            RegexAppliesTo(
                regex="/^Resource::<StorageData[0-9A-F]+\\.Arn>\\/(raw|curated|quarantine|features)\\/\\*$/"
            ),
        ],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="KMS data-key actions for objects, messages and secrets encrypted with "
        "gallop's own keys; each statement names one key.",
        applies_to=["Action::kms:GenerateDataKey*", "Action::kms:ReEncrypt*"],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="X-Ray's PutTraceSegments and PutTelemetryRecords have no resource-level "
        "permissions: AWS requires Resource '*' for active tracing. (A test checks that no "
        "other action is granted on '*'.)",
        applies_to=["Resource::*"],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="The custom-resource provider invokes the migrate function by version or "
        "alias, which the ':*' suffix covers; it is that one function.",
        applies_to=[RegexAppliesTo(regex="/^Resource::<MigrationsFunction[0-9A-F]+\\.Arn>:\\*$/")],
    ),
]

RUNTIME = [
    NagPackSuppression(
        id=rule,
        reason="Pinned to python3.12: the layers are built from cp312 wheels and the code is "
        "tested on it. Moving runtime is a deliberate change, not a default.",
    )
    for rule in ("AwsSolutions-L1", "Serverless-LambdaLatestVersion")
]
NO_ASYNC = NagPackSuppression(
    id="Serverless-LambdaDLQ",
    reason="Never invoked asynchronously: SQS-driven functions dead-letter through their "
    "queue's redrive policy; the api and migrate functions are invoked synchronously.",
)
SQS_MAPPING = NagPackSuppression(
    id="Serverless-LambdaEventSourceMappingDestination",
    reason="On-failure destinations exist only for stream sources; for SQS the queue's "
    "redrive policy sends failed messages to its dead-letter queue.",
)
IS_DLQ = NagPackSuppression(
    id="Serverless-SQSRedrivePolicy",
    reason="This queue is itself the dead-letter queue of a work queue (alarmed on depth).",
)
API_KEYS = [
    NagPackSuppression(
        id=rule,
        reason="Callers are applications holding API keys: every method requires a key "
        "(usage plans throttle and cap each client; WAF managed rules filter requests), and "
        "the app verifies the gateway validated one. No end-user identity to federate.",
    )
    for rule in ("AwsSolutions-APIG4", "AwsSolutions-COG4")
]
CDK_MANAGED = [
    NagPackSuppression(
        id=rule,
        reason="The custom-resource provider's own function, created and configured by CDK; "
        "it only relays the deploy-time event to the migrate function, which is traced.",
    )
    for rule in ("Serverless-LambdaDefaultMemorySize", "Serverless-LambdaTracing")
]


def suppress_justified(stack: GallopStack) -> None:
    NagSuppressions.add_stack_suppressions(stack, IAM)
    for function in (stack.api.function, stack.migrations.function):
        NagSuppressions.add_resource_suppressions(function, RUNTIME)
    for function in (*stack.pipeline.functions, stack.api.function, stack.migrations.function):
        NagSuppressions.add_resource_suppressions(function, [NO_ASYNC])
    NagSuppressions.add_resource_suppressions(stack.pipeline, [SQS_MAPPING], apply_to_children=True)
    for queue in stack.pipeline.dead_letter_queues:
        NagSuppressions.add_resource_suppressions(queue, [IS_DLQ])
    NagSuppressions.add_resource_suppressions(stack.api.rest_api, API_KEYS, apply_to_children=True)
    NagSuppressions.add_resource_suppressions(
        stack.migrations.provider, [*CDK_MANAGED, NO_ASYNC], apply_to_children=True
    )
