"""Migrations on deploy: a custom resource runs Alembic through the migrate function.
Its properties carry a hash of the migration files, so a deploy that adds one runs it."""

from __future__ import annotations

import hashlib

from aws_cdk import CustomResource, Duration
from aws_cdk import aws_lambda as lambda_
from aws_cdk import custom_resources as cr
from constructs import Construct

from gallop.metadata.db import MIGRATIONS
from infra.functions import Placement, Wiring, zip_function


def migrations_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Migrations(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        layers: list[lambda_.ILayerVersion],
        wiring: Wiring,
        placement: Placement,
    ) -> None:
        super().__init__(scope, id)
        self.function = zip_function(
            self,
            "Function",
            function="migrate",
            layers=layers,
            wiring=wiring,
            placement=placement,
            memory_mb=512,
            timeout=Duration.minutes(5),
            description="Bring the metadata schema to the newest migration",
        )
        self.provider = cr.Provider(self, "Provider", on_event_handler=self.function)
        self.resource = CustomResource(
            self,
            "Schema",
            service_token=self.provider.service_token,
            properties={"migrations": migrations_hash()},
        )
