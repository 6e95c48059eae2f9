"""The metadata store: Aurora Serverless v2 Postgres in private subnets, reached
through RDS Proxy, its credentials in Secrets Manager with rotation."""

from __future__ import annotations

from aws_cdk import Annotations, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from constructs import Construct

from infra.stages import Stage

# Pinned: a new minor version is a deliberate change (tests/infra/test_infra.py checks this one
# against cfn-lint's list of deprecated versions).
ENGINE_VERSION = rds.AuroraPostgresEngineVersion.VER_17_9
DATABASE_NAME = "gallop"
DATABASE_USER = "gallop"


class Database(Construct):
    def __init__(
        self, scope: Construct, id: str, *, vpc: ec2.IVpc, key: kms.IKey, stage: Stage
    ) -> None:
        super().__init__(scope, id)
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.clients = ec2.SecurityGroup(
            self, "Clients", vpc=vpc, description="Functions that use the metadata store"
        )
        self.cluster = rds.DatabaseCluster(
            self,
            "Cluster",
            engine=rds.DatabaseClusterEngine.aurora_postgres(version=ENGINE_VERSION),
            writer=rds.ClusterInstance.serverless_v2("Writer"),
            readers=[
                # Scales with the writer: ready to take over at the writer's size.
                rds.ClusterInstance.serverless_v2(f"Reader{i}", scale_with_writer=True)
                for i in range(1, stage.database_readers + 1)
            ],
            serverless_v2_min_capacity=stage.database_min_acu,
            serverless_v2_max_capacity=stage.database_max_acu,
            vpc=vpc,
            vpc_subnets=private,
            default_database_name=DATABASE_NAME,
            credentials=rds.Credentials.from_generated_secret(DATABASE_USER, encryption_key=key),
            storage_encrypted=True,
            storage_encryption_key=key,
            iam_authentication=True,
            deletion_protection=not stage.destroys_data,
            backup=rds.BackupProps(retention=Duration.days(14)),
            cloudwatch_logs_exports=["postgresql"],
            # Kept data: a final snapshot when the stack goes.
            removal_policy=(
                RemovalPolicy.DESTROY if stage.destroys_data else RemovalPolicy.SNAPSHOT
            ),
            # In every stage: Performance Insights' 7 days are free, and Enhanced
            # Monitoring's OS metrics each minute cost little; both answer "why slow?".
            enable_performance_insights=True,
            performance_insight_retention=rds.PerformanceInsightRetention.DEFAULT,
            performance_insight_encryption_key=key,
            monitoring_interval=Duration.seconds(60),
        )
        Annotations.of(self.cluster).acknowledge_warning(
            "@aws-cdk/aws-rds:instancePerformanceInsightsOverridden",
            "Performance Insights is set once, on the cluster, for every instance",
        )
        assert self.cluster.secret is not None
        self.secret = self.cluster.secret
        self.cluster.add_rotation_single_user(automatically_after=Duration.days(30))
        self.proxy = self.cluster.add_proxy(
            "Proxy",
            # Proxy names are unique per account and region: derive it from the stack.
            db_proxy_name=f"{Stack.of(self).stack_name}-metadata",
            secrets=[self.secret],
            vpc=vpc,
            vpc_subnets=private,
            require_tls=True,
            # Clients present IAM tokens; only the proxy uses the (rotated) secret.
            iam_auth=True,
            security_groups=[self._proxy_group(vpc)],
        )
        self.proxy_group.add_ingress_rule(
            self.clients, ec2.Port.tcp(5432), "functions to the proxy"
        )
        self.cluster.connections.allow_default_port_from(self.proxy_group, "proxy to cluster")

    def _proxy_group(self, vpc: ec2.IVpc) -> ec2.SecurityGroup:
        self.proxy_group = ec2.SecurityGroup(
            self, "ProxyGroup", vpc=vpc, description="RDS Proxy for the metadata store"
        )
        return self.proxy_group
