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
# Partition, region and account in an ARN: tokens, or literal when synthesised for an
# environment (as every stage is).
PARTITION = "(<AWS::Partition>|aws[a-z-]*)"
WHERE = "(<AWS::Region>|[a-z0-9-]+):(<AWS::AccountId>|[0-9]{12})"

IAM = [
    NagPackSuppression(
        id="AwsSolutions-IAM4",
        reason="AWS managed service-role policies that grant only what every Lambda (logs), "
        "VPC Lambda (network interfaces, which have no resource-level permissions), API "
        "Gateway account logging and RDS Enhanced Monitoring (its own log group) need.",
        applies_to=[
            MANAGED + "AWSLambdaBasicExecutionRole",
            MANAGED + "AWSLambdaVPCAccessExecutionRole",
            MANAGED + "AmazonAPIGatewayPushToCloudWatchLogs",
            MANAGED + "AmazonRDSEnhancedMonitoringRole",
        ],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="Object keys carry dataset, version, upload, run and model ids that are not "
        "known at deploy time: each S3 grant's object actions (GetObject*, PutObject*, "
        "DeleteObject*, Abort*) cover one prefix of the data bucket (raw/, curated/, "
        "quarantine/, unclaimed/, features/, capture/ or capture-errors/, the last two "
        "written only by the capture stream's role) or of the artifacts bucket (training/, "
        "models/ or aliases/), or one file name under models/ (the monitor's page and drift "
        "reference, models/*/monitoring.html and models/*/monitor_reference.npz). Read grants "
        "also carry s3:List* and s3:GetBucket* on that bucket itself, "
        "not held to the prefix: a reader may list every key of the bucket (names, not "
        "contents), because S3 answers a read of a missing key 404 (the code's ObjectMissing) "
        "only to a caller that may list the bucket, and 403 to any other.",
        applies_to=[
            "Action::s3:Abort*",
            "Action::s3:DeleteObject*",
            "Action::s3:GetBucket*",
            "Action::s3:GetObject*",
            "Action::s3:List*",
            RegexAppliesTo(
                regex="/^Resource::<StorageData[0-9A-F]+\\.Arn>\\/(raw|curated|quarantine|unclaimed|features|capture|capture-errors)\\/\\*$/"
            ),
            RegexAppliesTo(
                regex="/^Resource::<StorageArtifacts[0-9A-F]+\\.Arn>\\/(training|models|aliases)\\/\\*$/"
            ),
            RegexAppliesTo(
                regex="/^Resource::<StorageArtifacts[0-9A-F]+\\.Arn>\\/models\\/\\*\\/"
                "(monitoring\\.html|monitor_reference\\.npz)$/"
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
        reason="Only actions without resource-level permissions, for which AWS requires "
        "Resource '*': X-Ray tracing (functions, state machines), the state machines' log "
        "delivery (logs:*LogDelivery*, resource policies), ECR's GetAuthorizationToken for "
        "the training image pull, SageMaker's training metrics (PutMetricData, held to "
        "its namespace by a condition), and answering a renewal execution's task token "
        "(states:SendTaskSuccess/SendTaskFailure: the token names the execution). A test "
        "lists each action allowed on '*'.",
        applies_to=["Resource::*"],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="The custom-resource provider invokes the migrate function, the training "
        "state machine the training function, and the API (check now) and the renewal state "
        "machine (an approval request's wait and expiry) the monitor function, by version or "
        "alias, which the ':*' suffix covers; each is that one function.",
        applies_to=[
            RegexAppliesTo(
                regex="/^Resource::<(Migrations|Training|Monitor)Function[0-9A-F]+\\.Arn>:\\*$/"
            )
        ],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="The api and predict functions read an API key's name and its gallop:roles "
        "tag by the id API Gateway gives them (apigateway:GET, read only): keys are added "
        "after deployment, so their ids are not known at deploy time.",
        applies_to=[
            RegexAppliesTo(
                regex=f"/^Resource::arn:{PARTITION}:apigateway:(<AWS::Region>|[a-z0-9-]+)"
                "::\\/apikeys\\/\\*$/"
            )
        ],
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        reason="Training job names carry the run id, unknown at deploy time: the state "
        "machine may create, describe, stop and tag only jobs named g-* (gallop's launcher "
        "names every job g-{run_id}-...; SageMaker allows 63 characters), and the jobs "
        "write log streams (named by SageMaker per job and instance) only in SageMaker's "
        "/aws/sagemaker/TrainingJobs group.",
        applies_to=[
            RegexAppliesTo(
                regex=f"/^Resource::arn:{PARTITION}:sagemaker:{WHERE}:training-job\\/g-\\*$/"
            ),
            RegexAppliesTo(
                regex=f"/^Resource::arn:{PARTITION}:logs:{WHERE}:log-group:"
                "\\/aws\\/sagemaker\\/TrainingJobs:\\*$/"
            ),
        ],
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
    "queue's redrive policy; the api, predict, migrate and training functions are invoked "
    "synchronously (the training function by its state machine, which retries and alarms).",
)
SQS_MAPPING = NagPackSuppression(
    id="Serverless-LambdaEventSourceMappingDestination",
    reason="On-failure destinations exist only for stream sources; for SQS the queue's "
    "redrive policy sends failed messages to its dead-letter queue.",
)
SCHEDULED = NagPackSuppression(
    id="Serverless-LambdaDLQ",
    reason="Invoked asynchronously by its schedule, its failures go to an on-failure "
    "destination (a queue, alarmed on depth) rather than a dead-letter queue: the "
    "destination's record holds the error beside the event.",
)
ALSO_DLQ = [
    NagPackSuppression(
        id=rule,
        reason="This queue is itself where failures end, as a dead-letter queue is, though "
        "no queue's redrive policy names it: a monitor run that failed (Lambda's on-failure "
        "destination) or an event EventBridge could not deliver (a rule target's "
        "dead-letter queue). Alarmed on depth; nothing redrives from it.",
    )
    for rule in ("Serverless-SQSRedrivePolicy", "AwsSolutions-SQS3")
]
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


ALARM_SUBSCRIBERS = NagPackSuppression(
    id="Serverless-SNSRedrivePolicy",
    reason="Alarm notifications to people (e-mail, webhook): a delivery that fails after "
    "SNS's retries loses no fact, since the alarm's state and history stay in CloudWatch, and a "
    "dead-letter queue for them could only alarm to these same subscribers.",
)
DEV_DATABASE = NagPackSuppression(
    id="AwsSolutions-RDS10",
    reason="The dev stage is deleted with its stack, database included, on purpose; every "
    "stage that keeps its data (prod) has deletion protection on.",
)


def suppress_justified(stack: GallopStack) -> None:
    NagSuppressions.add_stack_suppressions(stack, IAM)
    NagSuppressions.add_resource_suppressions(
        stack.monitoring.topic, [ALARM_SUBSCRIBERS], apply_to_children=True
    )
    if stack.deployment.stage.destroys_data:
        NagSuppressions.add_resource_suppressions(stack.database.cluster, [DEV_DATABASE])
    zips = (
        stack.api.function,
        stack.api.predict,
        stack.migrations.function,
        stack.training.function,
    )
    for function in zips:
        NagSuppressions.add_resource_suppressions(function, RUNTIME)
    for function in (*stack.pipeline.functions, *zips):
        NagSuppressions.add_resource_suppressions(function, [NO_ASYNC])
    for consumers in (stack.pipeline, stack.monitor.function):
        NagSuppressions.add_resource_suppressions(consumers, [SQS_MAPPING], apply_to_children=True)
    assert stack.monitor.queue.dead_letter_queue is not None
    for queue in (*stack.pipeline.dead_letter_queues, stack.monitor.queue.dead_letter_queue.queue):
        NagSuppressions.add_resource_suppressions(queue, [IS_DLQ])
    NagSuppressions.add_resource_suppressions(stack.monitor.function, [SCHEDULED])
    for queue in (stack.monitor.dead_letters, stack.monitoring.undelivered):
        NagSuppressions.add_resource_suppressions(queue, ALSO_DLQ)
    NagSuppressions.add_resource_suppressions(stack.api.rest_api, API_KEYS, apply_to_children=True)
    NagSuppressions.add_resource_suppressions(
        stack.migrations.provider, [*CDK_MANAGED, NO_ASYNC], apply_to_children=True
    )
