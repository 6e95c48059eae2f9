"""Approval requests on AWS: the renewal state machine waits on a task token until a person
decides the request or it times out. The decision itself is the database's (the API's
POST /v1/approvals/{id} promotes in one transaction, gallop.renewal); the execution only
waits, and on timeout has the request expired.

    AwaitDecision (the monitor function, .waitForTaskToken: it stores the token on the
      request and announces it on the alarm topic)
      -> success (SendTaskSuccess: approved) -> Approved
      -> REJECTED (SendTaskFailure)          -> Rejected
      -> EXPIRED (expired by a read or a monitor run first) -> Expired
      -> States.Timeout (approval_timeout_hours) -> Expire (the monitor function) -> Expired
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

# What gallop.renewal.notify tells a waiting execution with SendTaskFailure: the request's
# status (gallop.metadata.models.ApprovalStatus).
REJECTED, EXPIRED = "REJECTED", "EXPIRED"
# Answering a task token: these actions have no resource-level permissions (the token
# names the execution), so they are allowed on '*'.
TASK_RESPONSES = ("states:SendTaskSuccess", "states:SendTaskFailure")


def machine_name(scope: Construct) -> str:
    return f"{Stack.of(scope).stack_name}-renewal"


def machine_arn(scope: Construct) -> str:
    """The machine's ARN from its name, not a reference to it: the monitor function, which
    the machine invokes, starts it, and a reference would make the two wait on each other."""
    return Stack.of(scope).format_arn(
        service="states",
        resource="stateMachine",
        resource_name=machine_name(scope),
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def may_start(scope: Construct) -> iam.PolicyStatement:
    """The monitor function opens a request: it starts an execution named for it."""
    return iam.PolicyStatement(actions=["states:StartExecution"], resources=[machine_arn(scope)])


def may_answer() -> iam.PolicyStatement:
    """The API (a decision) and the monitor (an expiry) tell a waiting execution."""
    return iam.PolicyStatement(actions=list(TASK_RESPONSES), resources=["*"])


class Renewal(Construct):
    def __init__(
        self, scope: Construct, id: str, *, function: lambda_.IFunction, wait: Duration
    ) -> None:
        super().__init__(scope, id)
        # The request is the execution's input: {"approval_id": ...}; each step keeps it.
        request = sfn.JsonPath.string_at("$.approval_id")
        await_decision = tasks.LambdaInvoke(
            self,
            "AwaitDecision",
            lambda_function=function,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            payload=sfn.TaskInput.from_object(
                {"renewal": "await", "approval_id": request, "task_token": sfn.JsonPath.task_token}
            ),
            # The request's own expiry (expires_at is set from the same hours).
            task_timeout=sfn.Timeout.duration(wait),
            result_path="$.decision",
        )
        expire = tasks.LambdaInvoke(
            self,
            "Expire",
            lambda_function=function,
            payload=sfn.TaskInput.from_object({"renewal": "expire", "approval_id": request}),
            payload_response_only=True,
            result_path=sfn.JsonPath.DISCARD,
        )
        # Expiring is idempotent (a decided request stays as decided): tried again through
        # a database or proxy hiccup, so the request does not wait for the backstop.
        expire.add_retry(
            errors=[sfn.Errors.ALL], max_attempts=6, interval=Duration.seconds(5), backoff_rate=2.0
        )
        expired = sfn.Fail(self, "Expired", error=EXPIRED, cause_path="$.error.Cause")
        rejected = sfn.Fail(self, "Rejected", error=REJECTED, cause_path="$.error.Cause")
        await_decision.add_catch(
            expire.next(expired), errors=[sfn.Errors.TIMEOUT], result_path="$.error"
        )
        await_decision.add_catch(expired, errors=[EXPIRED], result_path="$.error")
        await_decision.add_catch(rejected, errors=[REJECTED], result_path="$.error")
        # Anything else (the function could not store the token) fails the execution with
        # its own error; the function's errors alarm, and the request still expires.

        log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            # Vended-logs names keep CloudWatch Logs' resource policy small.
            log_group_name=f"/aws/vendedlogs/states/{machine_name(self)}",
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=machine_name(self),
            comment="gallop approval request: wait for a decision, or expire",
            definition_body=sfn.DefinitionBody.from_chainable(
                await_decision.next(sfn.Succeed(self, "Approved"))
            ),
            state_machine_type=sfn.StateMachineType.STANDARD,
            # A backstop only: the wait's own timeout ends every execution before this.
            timeout=wait.plus(Duration.hours(1)),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group,
                level=sfn.LogLevel.ALL,
                # Events without their data: a waiting task's parameters hold its token.
                include_execution_data=False,
            ),
        )
