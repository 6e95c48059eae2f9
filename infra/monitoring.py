"""Alarms on what ops must hear about, all to one SNS topic."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from gallop.observability import NAMESPACE

P99_LATENCY_MS = 1000
# Counted by the ingest function for each upload it moves to unclaimed/ (no such dataset,
# or a key of the wrong shape): a person has to look.
UNCLAIMED_UPLOADS = "UnclaimedUploads"


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        key: kms.Key,
        emails: tuple[str, ...] = (),
        webhooks: tuple[str, ...] = (),
    ) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Alarms", master_key=key, display_name="gallop alarms")
        # Each subscriber confirms once (the link SNS sends, or the endpoint's reply to the
        # SubscriptionConfirmation) before anything reaches it.
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
        for url in webhooks:
            self.topic.add_subscription(
                subscriptions.UrlSubscription(url, protocol=sns.SubscriptionProtocol.HTTPS)
            )
        stack = Stack.of(self)
        alarms = f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:*"
        from_our_alarms = {"ArnLike": {"aws:SourceArn": alarms}}
        cloudwatch_principal = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        # A topic policy replaces SNS's default one: CloudWatch must be allowed explicitly,
        # and must be able to use the topic's key.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[cloudwatch_principal],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=from_our_alarms,
            )
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[cloudwatch_principal],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions=from_our_alarms,
            )
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"Bool": {"aws:SecureTransport": "false"}},
            )
        )
        self._action = actions.SnsAction(self.topic)

    def _alarm(
        self, id: str, metric: cloudwatch.Metric, threshold: float, what: str, of: int = 1
    ) -> None:
        """Alarm when `of` of the last `of` periods breach (1: at once)."""
        alarm = metric.create_alarm(
            self,
            id,
            threshold=threshold,
            evaluation_periods=of,
            datapoints_to_alarm=of,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=what,
        )
        alarm.add_alarm_action(self._action)

    def watch_function(self, name: str, function: lambda_.IFunction) -> None:
        period = Duration.minutes(5)
        self._alarm(
            f"{name}Errors", function.metric_errors(period=period), 1, f"{name}: invocations failed"
        )
        self._alarm(
            f"{name}Throttles",
            function.metric_throttles(period=period),
            1,
            f"{name}: invocations throttled",
        )

    def watch_dead_letters(self, name: str, queue: sqs.IQueue) -> None:
        metric = queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5))
        self._alarm(f"{name}DeadLetters", metric, 1, f"{name}: messages were dead-lettered")

    def watch_api(self, api: apigw.RestApi) -> None:
        period = Duration.minutes(5)
        self._alarm("Api5xx", api.metric_server_error(period=period), 1, "API answered 5xx")
        latency = api.metric_latency(period=period, statistic="p99")
        self._alarm(
            "ApiLatencyP99",
            latency,
            P99_LATENCY_MS,
            f"API p99 latency at or above {P99_LATENCY_MS} ms",
        )

    def watch_unclaimed_uploads(self, service: str) -> None:
        metric = cloudwatch.Metric(
            namespace=NAMESPACE,
            metric_name=UNCLAIMED_UPLOADS,
            dimensions_map={"service": service},
            statistic="Sum",
            period=Duration.minutes(5),
        )
        self._alarm(
            "UnclaimedUploads", metric, 1, "uploads under raw/ no dataset claims: see unclaimed/"
        )

    def watch_state_machine(self, name: str, machine: sfn.IStateMachine) -> None:
        """A run that failed or ran out of time: its jobs' logs and the execution say why."""
        period = Duration.minutes(5)
        self._alarm(
            f"{name}ExecutionsFailed",
            machine.metric_failed(period=period),
            1,
            f"{name}: executions failed",
        )
        self._alarm(
            f"{name}ExecutionsTimedOut",
            machine.metric_timed_out(period=period),
            1,
            f"{name}: executions timed out",
        )
