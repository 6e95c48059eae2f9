"""Upload to features: raw/ ObjectCreated -> SQS -> ingest -> SQS -> features.
Each queue has a dead-letter queue; functions report partial batch failures."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from gallop.layout import RAW_PREFIX
from gallop.settings import MAX_RECEIVE_COUNT
from infra.functions import Placement, Wiring, image_function


def work_queue(scope: Construct, id: str, key: kms.IKey, timeout: Duration) -> sqs.Queue:
    dlq = sqs.Queue(
        scope,
        f"{id}Dlq",
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    return sqs.Queue(
        scope,
        id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        # Lambda's advice: six times the function timeout, so retries are not premature.
        visibility_timeout=Duration.seconds(6 * timeout.to_seconds()),
        dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=MAX_RECEIVE_COUNT, queue=dlq),
    )


class Pipeline(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        data: s3.IBucket,
        key: kms.IKey,
        placement: Placement,
        wiring_for: callable,  # type: ignore[valid-type]
    ) -> None:
        super().__init__(scope, id)
        timeout = Duration.minutes(5)
        self.ingest_queue = work_queue(self, "IngestQueue", key, timeout)
        self.features_queue = work_queue(self, "FeaturesQueue", key, Duration.minutes(10))
        # Only raw/: the handlers write curated/, features/ and quarantine/ and must not
        # trigger themselves.
        data.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.SqsDestination(self.ingest_queue),
            s3.NotificationKeyFilter(prefix=RAW_PREFIX),
        )
        wiring: Wiring = wiring_for(self.features_queue.queue_url)
        self.ingest = image_function(
            self,
            "Ingest",
            function="ingest",
            wiring=wiring,
            placement=placement,
            memory_mb=3008,
            timeout=timeout,
            description="Validate uploads into canonical, versioned Parquet",
        )
        self.features = image_function(
            self,
            "Features",
            function="features",
            wiring=wiring,
            placement=placement,
            memory_mb=4096,
            timeout=Duration.minutes(10),
            description="Point-in-time features and the entity snapshot of a version",
        )
        # Bounded concurrency: a burst of uploads must not open hundreds of connections to a
        # 4-ACU database. One upload per ingest invocation: a slow file cannot make its
        # batch-mates time out with it.
        self.ingest.add_event_source(
            sources.SqsEventSource(
                self.ingest_queue, batch_size=1, max_concurrency=10, report_batch_item_failures=True
            )
        )
        self.features.add_event_source(
            sources.SqsEventSource(
                self.features_queue,
                batch_size=1,
                max_concurrency=4,
                report_batch_item_failures=True,
            )
        )

    @property
    def functions(self) -> list[lambda_.IFunction]:
        return [self.ingest, self.features]

    @property
    def dead_letter_queues(self) -> list[sqs.IQueue]:
        queues = [self.ingest_queue, self.features_queue]
        return [q.dead_letter_queue.queue for q in queues if q.dead_letter_queue]
