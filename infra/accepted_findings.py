"""What cfn-lint and checkov find in the synthesised templates and we keep, each with its
reason. Everything else they find fails tests/infra/test_infra.py, and so does an entry here
that no longer matches a finding in any stage (the list cannot outlive its reasons).

`paths` are construct paths under the stack (fnmatch patterns): the resource found.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accepted:
    rule: str
    paths: tuple[str, ...]
    reason: str


# CDK's own custom-resource handlers (bucket notifications, emptying dev's buckets,
# closing the VPC's default security group, the migrations' provider): CDK writes and
# configures them, and CloudFormation invokes them while it deploys.
CDK_HANDLERS = (
    "BucketNotificationsHandler*/Resource",
    "Custom::*CustomResourceProvider/Handler",
    "Migrations/Provider/framework-onEvent/Resource",
)

CFN_LINT = [
    Accepted(
        "W3005",
        ("*",),
        "CDK writes DependsOn beside a Ref or GetAtt to the same resource (a function on its "
        "role's policy, the proxy's target group on the cluster): redundant, and harmless.",
    ),
]

CHECKOV = [
    Accepted(
        "CKV_AWS_59",
        (
            "Api/RestApi/Default/openapi.json/GET/Resource",
            "Api/RestApi/Default/docs/GET/Resource",
            "Api/RestApi/Default/redoc/GET/Resource",
        ),
        "The API's description and its docs answer without a key on purpose: routes and "
        "schemas, no data, for client generators and browsers that cannot send a header "
        "first (README). Every other method requires a key.",
    ),
    Accepted(
        "CKV_AWS_18",
        ("Storage/AccessLogs/Resource",),
        "The bucket that receives the other buckets' access logs: logging its own access "
        "would log each log delivery, without end.",
    ),
    Accepted(
        "CKV_AWS_158",
        ("*",),
        "Log groups are encrypted at rest by CloudWatch Logs with its own keys; a customer "
        "key (a key policy for the logs service, in each region) is not done yet.",
    ),
    Accepted(
        "CKV_AWS_173",
        ("*",),
        "Environment variables hold resource names only (buckets, queues, the proxy's host), "
        "no secret: the database is reached with IAM tokens. Lambda encrypts them at rest.",
    ),
    Accepted(
        "CKV_AWS_116",
        ("*",),
        "No function but the monitor is invoked asynchronously: API Gateway, the state "
        "machine and CloudFormation invoke synchronously, and the SQS-driven functions "
        "dead-letter through their queues' redrive policies (as cdk-nag's "
        "Serverless-LambdaDLQ suppression says). The monitor, run by its schedule, sends a "
        "failed run to an on-failure destination (a queue, alarmed on depth), which keeps "
        "the error with the event where a dead-letter queue would keep the event only.",
    ),
    Accepted(
        "CKV_AWS_117",
        ("Api/PredictFunction/Resource", *CDK_HANDLERS),
        "Outside the VPC on purpose: the predict function and CDK's handlers reach only AWS "
        "APIs, and need no network interfaces (nor NAT) for it.",
    ),
    Accepted(
        "CKV_AWS_115",
        (
            "Pipeline/Ingest/Resource",
            "Pipeline/Features/Resource",
            "Training/Function/Resource",
            "Migrations/Function/Resource",
            *CDK_HANDLERS,
        ),
        "Bounded without a reservation, which would hold capacity from the account for good: "
        "ingest and features by their SQS event sources' maximum concurrency, training by "
        "the state machine's runs, migrate and CDK's handlers by deploys. The api and "
        "predict functions have the stage's reserved concurrency.",
    ),
    Accepted(
        "CKV_AWS_120",
        ("Api/RestApi/DeploymentStage.*/Resource",),
        "No API Gateway cache: answers depend on the caller's key and on state that changes "
        "(runs, models, aliases), and predictions are POSTs.",
    ),
]
