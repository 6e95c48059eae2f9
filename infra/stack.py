"""The gallop stack: composes one construct per concern and does every grant."""

from __future__ import annotations

import jsii
from aws_cdk import Aspects, CfnOutput, Duration, Fn, IAspect, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from gallop.layout import (
    ALIASES_PREFIX,
    CAPTURE_ROOT,
    CURATED_PREFIX,
    FEATURES_PREFIX,
    MODELS_PREFIX,
    MONITOR_REFERENCE_FILE,
    MONITORING_HTML_FILE,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    TRAINING_PREFIX,
    UNCLAIMED_PREFIX,
    legacy_alias_key,
)
from gallop.settings import env_name
from infra import renewal
from infra.api import Api
from infra.capture import Capture
from infra.database import DATABASE_NAME, DATABASE_USER, Database
from infra.functions import Placement, Wiring, layer, service_name
from infra.migrations import Migrations
from infra.monitor import Monitor
from infra.monitoring import Monitoring
from infra.pipeline import Pipeline
from infra.stages import Deployment
from infra.storage import Storage
from infra.training import Training


@jsii.implements(IAspect)
class LogRetention:
    """Every log group of the stack keeps its events for the stage's retention."""

    def __init__(self, days: int) -> None:
        self.days = days

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, logs.CfnLogGroup):
            node.retention_in_days = self.days


class GallopStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, deployment: Deployment, **kwargs: object
    ) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.deployment = deployment
        stage = deployment.stage
        Aspects.of(self).add(LogRetention(stage.log_retention_days))
        # One key per concern: the queue key's policy names the data bucket (S3 sends
        # notifications), so the bucket cannot share it without a dependency cycle.
        data_key = self._key("DataKey", "gallop buckets")
        messages_key = self._key("MessagesKey", "gallop queues and alarm topic")
        database_key = self._key("DatabaseKey", "gallop metadata database and its secret")
        storage = Storage(
            self,
            "Storage",
            key=data_key,
            removal_policy=stage.removal_policy,
            unclaimed_expiry_days=stage.unclaimed_expiry_days,
        )
        vpc = self._network(stage.nat_gateways)
        database = Database(self, "Database", vpc=vpc, key=database_key, stage=stage)
        placement = Placement(vpc, [database.clients])
        # Prediction capture lands in the data bucket, under its key.
        capture = Capture(self, "Capture", data=storage.data, key=data_key)

        web = layer(self, "WebLayer", "web", "FastAPI, Mangum, pydantic, Powertools, orjson")
        db = layer(self, "DbLayer", "db", "SQLAlchemy, Alembic, psycopg")
        numpy = layer(self, "NumpyLayer", "numpy", "numpy (the feature engine)")
        inference = layer(self, "InferenceLayer", "inference", "onnxruntime (the model runtime)")

        def wiring(
            features_queue_url: str = "",
            training: Training | None = None,
            monitor: Monitor | None = None,
            **more: str,
        ) -> Wiring:
            launches = {}
            if training is not None:
                launches = {
                    "training_state_machine_arn": training.state_machine.state_machine_arn,
                    "training_image": training.image.image_uri,
                    "sagemaker_role_arn": training.sagemaker_role.role_arn,
                    # The image's content hash: the training code and its pinned packages.
                    "code_version": training.image.asset_hash,
                    # SageMaker would encrypt the jobs' output with the AWS managed key.
                    "training_kms_key_id": data_key.key_arn,
                }
            return Wiring(
                database_host=database.proxy.endpoint,
                database_user=DATABASE_USER,
                database_name=DATABASE_NAME,
                data_bucket=storage.data.bucket_name,
                features_queue_url=features_queue_url,
                artifacts_bucket=storage.artifacts.bucket_name,
                capture_stream=capture.stream_name,
                monitor_queue_url=monitor.queue.queue_url if monitor else "",
                monitor_function_name=monitor.function.function_name if monitor else "",
                **launches,
                **more,
            )

        monitoring = Monitoring(
            self,
            "Monitoring",
            key=messages_key,
            emails=deployment.alarm_emails,
            webhooks=deployment.alarm_webhooks,
        )
        training = Training(
            self,
            "Training",
            layers=[web, db],
            wiring=wiring(),
            placement=placement,
        )
        # The monitor retrains as the API trains (the same launcher), announces approval
        # requests on the alarm topic and starts the renewal state machine on each.
        monitor = Monitor(
            self,
            "Monitor",
            wiring=wiring(
                training=training,
                alarm_topic_arn=monitoring.topic.topic_arn,
                renewal_state_machine_arn=renewal.machine_arn(self),
            ),
            placement=placement,
            key=messages_key,
            every=Duration.minutes(stage.monitor_every_minutes),
        )
        approval_wait = Duration.seconds(round(deployment.approval_timeout_hours * 3600))
        renewals = renewal.Renewal(self, "Renewal", function=monitor.function, wait=approval_wait)
        pipeline = Pipeline(
            self,
            "Pipeline",
            data=storage.data,
            key=messages_key,
            placement=placement,
            wiring_for=lambda features_queue_url: wiring(features_queue_url, monitor=monitor),
        )
        api = Api(
            self,
            "Api",
            layers=[web, db, numpy],
            predict_layers=[web, numpy, inference],
            wiring=wiring(training=training, monitor=monitor),
            placement=placement,
            stage_name=stage.name,
            api_concurrency=stage.api_concurrency,
            predict_concurrency=stage.predict_concurrency,
            keys=deployment.api_keys,
        )
        migrations = Migrations(
            self, "Migrations", layers=[web, db], wiring=wiring(), placement=placement
        )
        # The schema can only be migrated once the writer, the proxy's target and the
        # security group rules exist; the environment alone only orders it after the proxy.
        migrations.resource.node.add_dependency(database)
        # Nothing may reach the database before its schema exists. (The function resources
        # only: their roles are named in key policies the migration itself depends on.)
        schema = migrations.resource.node.default_child
        for function in [*pipeline.functions, api.function, training.function, monitor.function]:
            function.node.default_child.node.add_dependency(schema)  # type: ignore[union-attr]

        # -- grants: least privilege, all in one place ------------------------------------
        connecting = [
            *pipeline.functions,
            api.function,
            migrations.function,
            training.function,
            monitor.function,
        ]
        for function in connecting:
            database.proxy.grant_connect(function, DATABASE_USER)
        # S3 by prefix, exactly what each function's code touches. Only ingest may delete,
        # and only in raw/ and unclaimed/; nothing may write raw/ but uploads signed by the
        # API and its retry of an unclaimed upload.
        data = storage.data
        data.grant_read(pipeline.ingest, f"{RAW_PREFIX}*")
        data.grant_delete(pipeline.ingest, f"{RAW_PREFIX}*")
        data.grant_put(pipeline.ingest, f"{CURATED_PREFIX}*")
        # An append reads the version it extends: its manifest and row index (and its data
        # when corrections replace stored races).
        data.grant_read(pipeline.ingest, f"{CURATED_PREFIX}*")
        data.grant_put(pipeline.ingest, f"{QUARANTINE_PREFIX}*")
        # An upload no dataset claims is moved aside, for a person to look at or retry.
        data.grant_read(pipeline.ingest, f"{UNCLAIMED_PREFIX}*")
        data.grant_put(pipeline.ingest, f"{UNCLAIMED_PREFIX}*")
        data.grant_delete(pipeline.ingest, f"{UNCLAIMED_PREFIX}*")
        data.grant_read(pipeline.features, f"{CURATED_PREFIX}*")
        data.grant_put(pipeline.features, f"{FEATURES_PREFIX}*")
        # The online pointer names the newest READY feature set: its manifest's data_end.
        data.grant_read(pipeline.features, f"{FEATURES_PREFIX}*")
        # The API signs presigned POSTs with its own credentials (so it needs PutObject on
        # raw/) and loads entity snapshots for race cards.
        data.grant_put(api.function, f"{RAW_PREFIX}*")
        data.grant_read(api.function, f"{FEATURES_PREFIX}*")
        # Lists unclaimed uploads and retries one: a copy back into raw/ (PutObject above).
        data.grant_read(api.function, f"{UNCLAIMED_PREFIX}*")
        data.grant_delete(api.function, f"{UNCLAIMED_PREFIX}*")  # once back under raw/
        pipeline.features_queue.grant_send_messages(pipeline.ingest)
        monitor.queue.grant_send_messages(pipeline.ingest)
        # POST /v1/monitoring/checks: the API runs the monitor now (it has no data image).
        monitor.function.grant_invoke(api.function)
        # Training: the API starts a run's execution and signs links to registered models'
        # reports; the state machine passes the SageMaker role (the API never does). The
        # training function turns a run's output into a model.
        artifacts = storage.artifacts
        artifacts.grant_read(api.function, f"{MODELS_PREFIX}*")
        training.state_machine.grant_start_execution(api.function)
        # Promotion (POST /v1/models/{id}/promote) writes the alias's key (gallop.layout, read
        # by the predict path instead of asking the database); the predict
        # function reads it and the model files it names, and entity snapshots (a version's
        # state.npz under features/, and the online pointer to the newest one) to complete
        # race cards. It writes nothing.
        artifacts.grant_put(api.function, f"{ALIASES_PREFIX}*")
        artifacts.grant_read(api.predict, f"{MODELS_PREFIX}*")
        artifacts.grant_read(api.predict, f"{ALIASES_PREFIX}*")
        data.grant_read(api.predict, f"{FEATURES_PREFIX}*")
        # The jobs read their train channel (a feature set, as the features function wrote
        # it) and the stack job the base jobs' output (the artifacts bucket's training/),
        # where each job writes its own model.tar.gz; the buckets' grants include their key.
        jobs = training.sagemaker_role
        data.grant_read(jobs, f"{FEATURES_PREFIX}*")
        artifacts.grant_read(jobs, f"{TRAINING_PREFIX}*")
        artifacts.grant_put(jobs, f"{TRAINING_PREFIX}*")
        artifacts.grant_read(training.function, f"{TRAINING_PREFIX}*")
        artifacts.grant_read(training.function, f"{MODELS_PREFIX}*")
        artifacts.grant_put(training.function, f"{MODELS_PREFIX}*")
        # Capture: the predict function sends what it served, to its stream only (the
        # stream's own role delivers it to capture/).
        capture.grant_put_records(api.predict)
        # The monitor reads what was captured, the results that followed (curated/) and
        # the models' feature sets (its drift reference's sample), and the models; it writes
        # only each model's monitoring page and drift reference, beside the model.
        for prefix in (CAPTURE_ROOT, CURATED_PREFIX, FEATURES_PREFIX):
            data.grant_read(monitor.function, f"{prefix}*")
        artifacts.grant_read(monitor.function, f"{MODELS_PREFIX}*")
        for name in (MONITORING_HTML_FILE, MONITOR_REFERENCE_FILE):
            artifacts.grant_put(monitor.function, f"{MODELS_PREFIX}*/{name}")

        # -- renewal (#14): retraining, approvals, keys with roles -----------------------
        # A retrain is a training run started by the monitor, as the API starts one; its
        # end makes the new model the challenger (the training function settles the
        # retraining policy), and an approval or a migration may move an alias: each writes
        # the dataset's serving object under aliases/.
        training.state_machine.grant_start_execution(monitor.function)
        artifacts.grant_read(monitor.function, f"{ALIASES_PREFIX}*")
        artifacts.grant_put(monitor.function, f"{ALIASES_PREFIX}*")
        artifacts.grant_put(training.function, f"{ALIASES_PREFIX}*")
        monitoring.topic.grant_publish(monitor.function)
        monitor.function.add_to_role_policy(renewal.may_start(self))
        for function in (api.function, monitor.function):
            function.add_to_role_policy(renewal.may_answer())
        # The monitor opens requests that expire as its state machine's wait does.
        monitor.function.add_environment(
            env_name("approval_timeout_hours"), str(deployment.approval_timeout_hours)
        )
        # After migrating, the migrate function writes every dataset's serving object from
        # the rows and deletes the objects of the aliases before they were per dataset.
        artifacts.grant_read(migrations.function, f"{ALIASES_PREFIX}*")
        artifacts.grant_put(migrations.function, f"{ALIASES_PREFIX}*")
        for alias in ("champion", "challenger"):  # the only aliases there were
            artifacts.grant_delete(migrations.function, legacy_alias_key(alias))
        # A gateway-checked key's name (the actor of its history lines) and roles (its
        # tag): read by its id, from API Gateway's control plane.
        keys = f"arn:{self.partition}:apigateway:{self.region}::/apikeys/*"
        for function in (api.function, api.predict):
            function.add_to_role_policy(
                iam.PolicyStatement(actions=["apigateway:GET"], resources=[keys])
            )

        for name, function in (
            ("Ingest", pipeline.ingest),
            ("Features", pipeline.features),
            ("Api", api.function),
            ("Predict", api.predict),
            ("Migrate", migrations.function),
            ("Training", training.function),
            ("Monitor", monitor.function),
        ):
            monitoring.watch_function(name, function)
        dead_letters = [
            *pipeline.dead_letter_queues,
            *monitor.dead_letter_queues,
            monitoring.undelivered,
        ]
        names = ("Ingest", "Features", "Monitor", "MonitorQueue", "UndeliveredEvents")
        for name, queue in zip(names, dead_letters, strict=True):
            monitoring.watch_dead_letters(name, queue)
        work = (pipeline.ingest_queue, pipeline.features_queue, monitor.queue)
        for name, queue in zip(("Ingest", "Features", "Monitor"), work, strict=True):
            monitoring.watch_queue_backlog(name, queue, stage.queue_age_alarm_minutes)
        # The margin the quality alarm fires at is the one the API and the monitoring page
        # judge live quality by (gallop.settings' quality_margin).
        for function in (api.function, monitor.function):
            function.add_environment(env_name("quality_margin"), str(stage.quality_margin))
        monitoring.watch_drift_and_quality(
            Duration.minutes(stage.monitor_every_minutes), stage.quality_margin
        )
        monitoring.watch_capture(capture.stream_name)
        monitoring.watch_database(database.cluster, stage.database_max_acu)
        monitoring.watch_proxy(database.proxy)
        monitoring.watch_secret_rotation(database.secret)
        monitoring.watch_api(api.rest_api)
        monitoring.watch_unclaimed_uploads(service_name("ingest"))
        monitoring.watch_state_machine("Training", training.state_machine)

        CfnOutput(self, "ApiUrl", value=api.rest_api.url)
        CfnOutput(self, "FirstApiKeyId", value=api.first_key.key_id)
        CfnOutput(self, "DataBucket", value=storage.data.bucket_name)
        CfnOutput(self, "ArtifactsBucket", value=storage.artifacts.bucket_name)
        CfnOutput(self, "AlarmTopic", value=monitoring.topic.topic_arn)
        CfnOutput(self, "CaptureStream", value=capture.stream_name)
        CfnOutput(self, "TrainingStateMachine", value=training.state_machine.state_machine_arn)
        CfnOutput(self, "TrainingImage", value=training.image.image_uri)
        CfnOutput(self, "RenewalStateMachine", value=renewals.state_machine.state_machine_arn)
        self.storage, self.database, self.pipeline, self.api = storage, database, pipeline, api
        self.migrations, self.monitoring, self.training = migrations, monitoring, training
        self.capture, self.monitor, self.renewal = capture, monitor, renewals
        self.layers = {"web": web, "db": db, "numpy": numpy, "inference": inference}

    @property
    def availability_zones(self) -> list[str]:
        """The region's first two zones, resolved at deploy time (as for a stack without an
        environment): naming them at synthesis needs a lookup in the account, and a cache
        of it in cdk.context.json for every account and region deployed to."""
        return [Fn.select(i, Fn.get_azs()) for i in range(2)]

    def _key(self, id: str, description: str) -> kms.Key:
        return kms.Key(
            self,
            id,
            enable_key_rotation=True,
            removal_policy=self.deployment.stage.removal_policy,
            description=description,
        )

    def _network(self, nat_gateways: int) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
                ec2.SubnetConfiguration(
                    name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(logs.LogGroup(self, "FlowLogs")),
        )
        return vpc
