"""cdk synth / cdk deploy entry point (cdk.json runs `python -m infra.app`).

Every setting enters here, from context (`cdk deploy -c stage=prod -c account=...`, which
the CLI passes to the app as CDK_CONTEXT_JSON) or, for account and region, from the CLI's
CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION (the credentials' account and region)."""

from __future__ import annotations

import os

import aws_cdk as cdk
import cdk_nag

from infra.nag import suppress_justified
from infra.stack import GallopStack
from infra.stages import (
    APPROVAL_TIMEOUT_HOURS,
    Deployment,
    DeploymentRefused,
    api_keys,
    listed,
    stage_named,
)


def deployment(app: cdk.App) -> Deployment:
    def context(key: str) -> str | None:
        value = app.node.try_get_context(key)
        return None if value is None else str(value)

    stage = stage_named(context("stage"))
    where = {}
    for key, variable in (("account", "CDK_DEFAULT_ACCOUNT"), ("region", "CDK_DEFAULT_REGION")):
        where[key] = context(key) or os.environ.get(variable)
        if not where[key]:
            # Never guessed: a stack synthesised for no account names none in its ARNs, and
            # one for the wrong region deploys where nobody looks.
            raise DeploymentRefused(
                f"no {key} given: pass -c {key}=... or run the cdk CLI with credentials "
                f"(it sets {variable})"
            )
    timeout = context("approval_timeout_hours")
    try:
        hours = APPROVAL_TIMEOUT_HOURS if timeout is None else float(timeout)
    except ValueError:
        raise DeploymentRefused(f"approval_timeout_hours {timeout!r} is not a number") from None
    return Deployment(
        stage=stage,
        account=where["account"],
        region=where["region"],
        alarm_emails=listed(context("alarm_email")),
        alarm_webhooks=listed(context("alarm_webhook")),
        api_keys=api_keys(app.node.try_get_context("api_keys")),
        approval_timeout_hours=hours,
    )


def build(context: dict | None = None) -> tuple[cdk.App, GallopStack]:
    app = cdk.App(context=context)
    target = deployment(app)
    stack = GallopStack(
        app,
        target.stack_name,
        deployment=target,
        env=cdk.Environment(account=target.account, region=target.region),
        description=f"gallop ({target.stage.name}): tabular ML on AWS",
    )
    suppress_justified(stack)
    cdk.Aspects.of(app).add(cdk_nag.AwsSolutionsChecks(verbose=True))
    cdk.Aspects.of(app).add(cdk_nag.ServerlessChecks(verbose=True))
    return app, stack


if __name__ == "__main__":
    build()[0].synth()
