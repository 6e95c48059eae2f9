"""The gallop stack: composes one construct per concern and does every grant."""

from __future__ import annotations

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from gallop.settings import (
    CURATED_PREFIX,
    FEATURES_PREFIX,
    MODELS_PREFIX,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    TRAINING_PREFIX,
)
from infra.api import Api
from infra.database import DATABASE_NAME, DATABASE_USER, Database
from infra.functions import Placement, Wiring, layer
from infra.migrations import Migrations
from infra.monitoring import Monitoring
from infra.pipeline import Pipeline
from infra.storage import Storage
from infra.training import Training

# Where promotions write each alias's model id (gallop.serving.registry.alias_key); the
# predict path reads it there instead of asking the database (a test ties the two).
ALIASES_PREFIX = "aliases/"


class GallopStack(Stack):
    def __init__(self, scope: Construct, id: str, **kwargs: object) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        # One key per concern: the queue key's policy names the data bucket (S3 sends
        # notifications), so the bucket cannot share it without a dependency cycle.
        data_key = self._key("DataKey", "gallop buckets")
        messages_key = self._key("MessagesKey", "gallop queues and alarm topic")
        database_key = self._key("DatabaseKey", "gallop metadata database and its secret")
        storage = Storage(self, "Storage", key=data_key)
        vpc = self._network()
        database = Database(self, "Database", vpc=vpc, key=database_key)
        placement = Placement(vpc, [database.clients])

        web = layer(self, "WebLayer", "web", "FastAPI, Mangum, pydantic, Powertools, orjson")
        db = layer(self, "DbLayer", "db", "SQLAlchemy, Alembic, psycopg")
        numpy = layer(self, "NumpyLayer", "numpy", "numpy (the feature engine)")
        inference = layer(self, "InferenceLayer", "inference", "onnxruntime (the model runtime)")

        def wiring(features_queue_url: str = "", training: Training | None = None) -> Wiring:
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
                **launches,
            )

        pipeline = Pipeline(
            self,
            "Pipeline",
            data=storage.data,
            key=messages_key,
            placement=placement,
            wiring_for=wiring,
        )
        training = Training(
            self,
            "Training",
            layers=[web, db],
            wiring=wiring(),
            placement=placement,
        )
        api = Api(
            self,
            "Api",
            layers=[web, db, numpy],
            predict_layers=[web, numpy, inference],
            wiring=wiring(training=training),
            placement=placement,
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
        for function in [*pipeline.functions, api.function, training.function]:
            function.node.default_child.node.add_dependency(schema)  # type: ignore[union-attr]

        # -- grants: least privilege, all in one place ------------------------------------
        for function in [*pipeline.functions, api.function, migrations.function, training.function]:
            database.proxy.grant_connect(function, DATABASE_USER)
        # S3 by prefix, exactly what each function's code touches. Only ingest may delete,
        # and only in raw/; nothing may write raw/ but uploads signed by the API.
        data = storage.data
        data.grant_read(pipeline.ingest, f"{RAW_PREFIX}*")
        data.grant_delete(pipeline.ingest, f"{RAW_PREFIX}*")
        data.grant_put(pipeline.ingest, f"{CURATED_PREFIX}*")
        data.grant_put(pipeline.ingest, f"{QUARANTINE_PREFIX}*")
        data.grant_read(pipeline.features, f"{CURATED_PREFIX}*")
        data.grant_put(pipeline.features, f"{FEATURES_PREFIX}*")
        # The API signs presigned POSTs with its own credentials (so it needs PutObject on
        # raw/) and loads entity snapshots for race cards.
        data.grant_put(api.function, f"{RAW_PREFIX}*")
        data.grant_read(api.function, f"{FEATURES_PREFIX}*")
        pipeline.features_queue.grant_send_messages(pipeline.ingest)
        # Training: the API starts a run's execution and signs links to registered models'
        # reports; the state machine passes the SageMaker role (the API never does). The
        # training function turns a run's output into a model.
        artifacts = storage.artifacts
        artifacts.grant_read(api.function, f"{MODELS_PREFIX}*")
        training.state_machine.grant_start_execution(api.function)
        # Promotion (POST /v1/models/{id}/promote) writes aliases/{alias}.json; the predict
        # function reads it and the model files it names, and entity snapshots (a version's
        # state.npz under features/) to complete race cards. It writes nothing.
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

        monitoring = Monitoring(self, "Monitoring", key=messages_key)
        for name, function in (
            ("Ingest", pipeline.ingest),
            ("Features", pipeline.features),
            ("Api", api.function),
            ("Predict", api.predict),
            ("Migrate", migrations.function),
            ("Training", training.function),
        ):
            monitoring.watch_function(name, function)
        for name, queue in zip(("Ingest", "Features"), pipeline.dead_letter_queues, strict=True):
            monitoring.watch_dead_letters(name, queue)
        monitoring.watch_api(api.rest_api)
        monitoring.watch_state_machine("Training", training.state_machine)

        CfnOutput(self, "ApiUrl", value=api.rest_api.url)
        CfnOutput(self, "FirstApiKeyId", value=api.first_key.key_id)
        CfnOutput(self, "DataBucket", value=storage.data.bucket_name)
        CfnOutput(self, "ArtifactsBucket", value=storage.artifacts.bucket_name)
        CfnOutput(self, "AlarmTopic", value=monitoring.topic.topic_arn)
        CfnOutput(self, "TrainingStateMachine", value=training.state_machine.state_machine_arn)
        CfnOutput(self, "TrainingImage", value=training.image.image_uri)
        self.storage, self.database, self.pipeline, self.api = storage, database, pipeline, api
        self.migrations, self.monitoring, self.training = migrations, monitoring, training
        self.layers = {"web": web, "db": db, "numpy": numpy, "inference": inference}

    def _key(self, id: str, description: str) -> kms.Key:
        return kms.Key(
            self,
            id,
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
            description=description,
        )

    def _network(self) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=1,
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
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                logs.LogGroup(self, "FlowLogs", retention=logs.RetentionDays.ONE_MONTH)
            ),
        )
        return vpc
