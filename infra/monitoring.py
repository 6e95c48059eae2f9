"""Alarms on what ops must hear about, all to one SNS topic."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from gallop.observability import NAMESPACE

P99_LATENCY_MS = 1000
# The stream buffers 60 s: records a quarter of an hour old have failed to reach S3.
CAPTURE_FRESHNESS_SECONDS = 900
# Counted by the ingest function for each upload it moves to unclaimed/ (no such dataset,
# or a key of the wrong shape): a person has to look.
UNCLAIMED_UPLOADS = "UnclaimedUploads"
# Published (EMF) by the monitor function and by the predict path's capture, under these
# services (gallop.monitoring): each with the dimension set ["service"] the alarms read.
MONITOR_SERVICE, PREDICT_SERVICE = "gallop-monitor", "gallop-predict"
DRIFTED_FEATURES, LIVE_QUALITY_DROP = "DriftedFeatures", "LiveQualityDrop"
CAPTURE_FAILURES, CAPTURE_DROPPED = "CaptureFailures", "CaptureDropped"
# The database: sustained CPU, and an instance whose memory is nearly all in use.
DATABASE_CPU_PERCENT = 80
DATABASE_FREEABLE_SHARE = 0.1  # of the memory at the stage's maximum capacity
GIB_PER_ACU = 2  # Aurora Serverless v2: one ACU is about 2 GiB of memory
# RDS Proxy: it cannot open connections to the database (a failed rotation leaves it the
# wrong password), or functions' IAM tokens are refused.
PROXY_SETUP_FAILED = "DatabaseConnectionsSetupFailed"
PROXY_AUTH_FAILED = "ClientConnectionsSetupFailedAuth"
# Secrets Manager's own events (through CloudTrail's service events) when a rotation fails.
ROTATION_FAILURES = ["RotationFailed", "RotationAbandoned"]


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
        # Events EventBridge could not deliver to the topic (a secret's failed rotation).
        self.undelivered = sqs.Queue(
            self,
            "UndeliveredEvents",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        # EventBridge publishes to the topic and dead-letters to queues under this key:
        # for this stack's rules only.
        where = f"{stack.partition}:events:{stack.region}:{stack.account}"
        rules = f"arn:{where}:rule/{stack.stack_name}-*"
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"ArnLike": {"aws:SourceArn": rules}},
            )
        )

    def _alarm(
        self,
        id: str,
        metric: cloudwatch.Metric,
        threshold: float,
        what: str,
        of: int = 1,
        below: bool = False,
    ) -> None:
        """Alarm when `of` of the last `of` periods breach (1: at once): at or above the
        threshold, or below it."""
        comparison = (
            cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD
            if below
            else cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        )
        alarm = metric.create_alarm(
            self,
            id,
            threshold=threshold,
            evaluation_periods=of,
            datapoints_to_alarm=of,
            comparison_operator=comparison,
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

    def watch_drift_and_quality(self, every: Duration, quality_margin: float) -> None:
        """What the monitor finds on its schedule (period: its interval, so each run's
        figures are judged once): drifted features, and live quality worse than training
        by the margin (LiveQualityDrop is the relative drop, 0.05 = 5 % worse)."""

        def monitored(name: str) -> cloudwatch.Metric:
            return _gallop_metric(name, MONITOR_SERVICE, "Maximum", every)

        self._alarm(
            "FeatureDrift",
            monitored(DRIFTED_FEATURES),
            1,
            "a serving model's features drifted from its training data: see its monitoring page",
        )
        self._alarm(
            "LiveQualityDrop",
            monitored(LIVE_QUALITY_DROP),
            quality_margin,
            f"a serving model's live quality is {quality_margin:.0%} or more below its "
            "training figure: see its monitoring page",
        )

    def watch_capture(self, stream_name: str) -> None:
        """Capture never fails a prediction: the predict function counts what it could not
        send instead; past the stream, records that cannot reach S3 wait in it (Firehose
        retries for up to a day), so their age says S3 delivery is failing."""
        period = Duration.minutes(5)
        for name, what in (
            (CAPTURE_FAILURES, "predictions could not be captured (Firehose refused or failed)"),
            (CAPTURE_DROPPED, "captured predictions were dropped (the sender's queue was full)"),
        ):
            metric = _gallop_metric(name, PREDICT_SERVICE, "Sum", period)
            self._alarm(name, metric, 1, what)
        freshness = cloudwatch.Metric(
            namespace="AWS/Firehose",
            metric_name="DeliveryToS3.DataFreshness",
            dimensions_map={"DeliveryStreamName": stream_name},
            statistic="Maximum",
            period=period,
        )
        self._alarm(
            "CaptureDeliveryLate",
            freshness,
            CAPTURE_FRESHNESS_SECONDS,
            f"captured predictions older than {CAPTURE_FRESHNESS_SECONDS // 60} minutes are "
            "still in the Firehose stream: its delivery to S3 is failing (see its error log)",
            of=2,
        )

    def watch_queue_backlog(self, name: str, queue: sqs.IQueue, minutes: int) -> None:
        metric = queue.metric_approximate_age_of_oldest_message(
            period=Duration.minutes(5), statistic="Maximum"
        )
        self._alarm(
            f"{name}Backlog",
            metric,
            minutes * 60,
            f"{name}: the oldest message has waited {minutes} minutes or more",
            of=2,
        )

    def watch_database(self, cluster: rds.DatabaseCluster, max_acu: float) -> None:
        """Sustained (15 minutes) CPU or memory pressure on the metadata store."""
        period = Duration.minutes(5)
        self._alarm(
            "DatabaseCpu",
            cluster.metric_cpu_utilization(period=period, statistic="Average"),
            DATABASE_CPU_PERCENT,
            f"metadata database: CPU at {DATABASE_CPU_PERCENT} % or more for 15 minutes",
            of=3,
        )
        # Serverless v2 reports what would be free at its maximum capacity.
        low = DATABASE_FREEABLE_SHARE * max_acu * GIB_PER_ACU * 1024**3
        self._alarm(
            "DatabaseMemory",
            cluster.metric_freeable_memory(period=period, statistic="Minimum"),
            low,
            f"metadata database: under {DATABASE_FREEABLE_SHARE:.0%} of its memory free at "
            "its maximum capacity for 15 minutes (raise the stage's maximum ACUs)",
            of=3,
            below=True,
        )

    def watch_proxy(self, proxy: rds.DatabaseProxy) -> None:
        period = Duration.minutes(5)

        def of_proxy(name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/RDS",
                metric_name=name,
                dimensions_map={"ProxyName": proxy.db_proxy_name},
                statistic="Sum",
                period=period,
            )

        self._alarm(
            "ProxyDatabaseConnectionsFailed",
            of_proxy(PROXY_SETUP_FAILED),
            1,
            "RDS Proxy could not connect to the database (its secret, or the database)",
        )
        self._alarm(
            "ProxyAuthFailed",
            of_proxy(PROXY_AUTH_FAILED),
            1,
            "RDS Proxy refused clients' IAM authentication (roles or tokens)",
        )

    def watch_secret_rotation(self, secret: secretsmanager.ISecret) -> None:
        """Secrets Manager reports a failed rotation as an event, not a metric: a rule
        sends it to the topic. (Not events_targets.SnsTopic: it would let every rule,
        of any account, publish to the topic and use its key; these statements name this
        rule.)"""
        rule = events.Rule(
            self,
            "SecretRotationFailed",
            description="A gallop secret's rotation failed: the proxy may lose the database",
            event_pattern=events.EventPattern(
                source=["aws.secretsmanager"],
                detail_type=["AWS Service Event via CloudTrail"],
                detail={
                    "eventSource": ["secretsmanager.amazonaws.com"],
                    "eventName": ROTATION_FAILURES,
                    "additionalEventData": {"SecretId": [secret.secret_arn]},
                },
            ),
        )
        cfn_rule: events.CfnRule = rule.node.default_child  # type: ignore[assignment]
        cfn_rule.targets = [
            events.CfnRule.TargetProperty(
                id="AlarmTopic",
                arn=self.topic.topic_arn,
                dead_letter_config=events.CfnRule.DeadLetterConfigProperty(
                    arn=self.undelivered.queue_arn
                ),
            )
        ]
        from_this_rule = {"ArnEquals": {"aws:SourceArn": rule.rule_arn}}
        events_principal = iam.ServicePrincipal("events.amazonaws.com")
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[events_principal],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=from_this_rule,
            )
        )
        self.undelivered.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[events_principal],
                actions=["sqs:SendMessage"],
                resources=[self.undelivered.queue_arn],
                conditions=from_this_rule,
            )
        )


def _gallop_metric(name: str, service: str, statistic: str, period: Duration) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=name,
        dimensions_map={"service": service},
        statistic=statistic,
        period=period,
    )
