"""The monitor: a function (the data image, in the VPC: it reads Parquet results and
reaches the database) that an EventBridge schedule runs, checking every serving model's
live quality and drift and publishing the metrics the alarms watch (infra.monitoring).
Ingest also announces each new VALID version on its queue (results arrived), and the API
invokes it to check now.

The schedule is also every retraining policy's clock (gallop.renewal): each scheduled run
fires the policies whose `every_hours` have passed, so the stage's monitor_every_minutes
is the finest retraining schedule there is (a policy fires at most one period late). The
same run compares each challenger and opens approval requests; the renewal state machine
(infra.renewal) invokes the function to wait on one and to expire it."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.functions import Placement, Wiring, image_function
from infra.pipeline import work_queue

TIMEOUT = Duration.minutes(15)


class Monitor(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        wiring: Wiring,
        placement: Placement,
        key: kms.IKey,
        every: Duration,
    ) -> None:
        super().__init__(scope, id)
        # A scheduled run that failed twice (or that EventBridge could not deliver) is kept,
        # with its error, and alarmed on; the next scheduled run starts from the same cursor
        # anyway.
        self.dead_letters = sqs.Queue(
            self,
            "Dlq",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        # Ingest's announcements of new versions: their results score captured rows.
        self.queue = work_queue(self, "Queue", key, TIMEOUT)
        self.function = image_function(
            self,
            "Function",
            function="monitor",
            wiring=wiring,
            placement=placement,
            # The budget is 1 GB for 100,000 captured rows; Lambda's CPU grows with memory.
            memory_mb=2048,
            timeout=TIMEOUT,
            description="Live quality and drift of every serving model, on a schedule",
            # Few at a time: each run reads a window of captured rows; a run that repeats
            # another's work stores the same figures (days are replaced whole). Two for
            # the queue's announcements, one left for the schedule or the API.
            reserved_concurrency=3,
        )
        self.function.add_event_source(
            # One announcement a run: each is a whole run of its dataset, and ten in one
            # invocation would repeat the same work, or time out together.
            sources.SqsEventSource(
                self.queue, batch_size=1, max_concurrency=2, report_batch_item_failures=True
            )
        )
        # An on-failure destination, not a dead-letter queue: its record holds the error
        # beside the event.
        self.function.configure_async_invoke(
            retry_attempts=1,
            max_event_age=Duration.hours(1),
            on_failure=destinations.SqsDestination(self.dead_letters),
        )
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="Run the gallop monitor: live quality, drift, retraining schedules",
            schedule=events.Schedule.rate(every),
            targets=[
                targets.LambdaFunction(
                    self.function,
                    retry_attempts=2,
                    max_event_age=Duration.hours(1),
                    dead_letter_queue=self.dead_letters,
                )
            ],
        )

    @property
    def dead_letter_queues(self) -> list[sqs.IQueue]:
        """Scheduled runs that failed, then announcements that failed at every delivery."""
        assert self.queue.dead_letter_queue is not None
        return [self.dead_letters, self.queue.dead_letter_queue.queue]

    @property
    def functions(self) -> list[lambda_.IFunction]:
        return [self.function]
