"""The metadata store: Aurora Serverless v2 Postgres in private subnets, reached
through RDS Proxy, its credentials in Secrets Manager with rotation."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from constructs import Construct

DATABASE_NAME = "gallop"
DATABASE_USER = "gallop"


class Database(Construct):
    def __init__(self, scope: Construct, id: str, *, vpc: ec2.IVpc, key: kms.IKey) -> None:
        super().__init__(scope, id)
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.clients = ec2.SecurityGroup(
            self, "Clients", vpc=vpc, description="Functions that use the metadata store"
        )
        self.cluster = rds.DatabaseCluster(
            self,
            "Cluster",
            engine=rds.DatabaseClusterEngine.aurora_postgres(
                version=rds.AuroraPostgresEngineVersion.VER_16_4
            ),
            writer=rds.ClusterInstance.serverless_v2("Writer"),
            serverless_v2_min_capacity=0.5,
            serverless_v2_max_capacity=4,
            vpc=vpc,
            vpc_subnets=private,
            default_database_name=DATABASE_NAME,
            credentials=rds.Credentials.from_generated_secret(DATABASE_USER, encryption_key=key),
            storage_encrypted=True,
            storage_encryption_key=key,
            iam_authentication=True,
            deletion_protection=True,
            backup=rds.BackupProps(retention=Duration.days(14)),
            cloudwatch_logs_exports=["postgresql"],
            removal_policy=RemovalPolicy.SNAPSHOT,
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
