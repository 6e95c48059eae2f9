"""cdk synth / cdk deploy entry point (cdk.json runs `python -m infra.app`)."""

from __future__ import annotations

import os

import aws_cdk as cdk
import cdk_nag

from infra.nag import suppress_justified
from infra.stack import GallopStack


def build(context: dict | None = None) -> tuple[cdk.App, GallopStack]:
    app = cdk.App(context=context)
    env = cdk.Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")
    )
    stack = GallopStack(app, "Gallop", env=env, description="gallop: tabular ML on AWS")
    suppress_justified(stack)
    cdk.Aspects.of(app).add(cdk_nag.AwsSolutionsChecks(verbose=True))
    cdk.Aspects.of(app).add(cdk_nag.ServerlessChecks(verbose=True))
    return app, stack


if __name__ == "__main__":
    build()[0].synth()
