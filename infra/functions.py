"""How every gallop function is made: same runtime, tracing, logs, network, and an
environment derived from what the code declares it needs (gallop.settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from gallop.observability import NAMESPACE
from gallop.settings import (
    ENV_DATABASE_HOST,
    ENV_DATABASE_IAM_AUTH,
    ENV_DATABASE_NAME,
    ENV_DATABASE_USER,
    ENV_TRAINING_LAUNCHER,
    FUNCTION_SETTINGS,
    STEPFUNCTIONS_SETTINGS,
    env_name,
)

# Byte code that importing the context leaves (the tests do) must not change the image's
# hash: it is the code version of every training run.
IMAGE_EXCLUDE = ["**/__pycache__", "**/*.pyc"]

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
BUILD_COMMAND = ".venv/bin/python layers/build.py"


class BundlesMissing(RuntimeError):
    pass


CODE_ONLY = "gallop:code-only-bundles"  # context flag: synthesis for tests, never deploy


def build_path(*parts: str) -> str:
    path = BUILD.joinpath(*parts)
    if not path.exists():
        raise BundlesMissing(f"{path} does not exist: run `{BUILD_COMMAND}` before synthesis")
    return str(path)


def dependencies_path(scope: Construct, *parts: str) -> str:
    """A layer or the image context, refused if its dependencies were not installed (a
    `--code-only` build leaves them empty), unless the app says it will not deploy."""
    path = build_path(*parts)
    installed = Path(path).rglob(".requirements.sha256")
    if not any(installed) and not scope.node.try_get_context(CODE_ONLY):
        raise BundlesMissing(
            f"{path} holds no installed dependencies: run `{BUILD_COMMAND}` (not --code-only)"
        )
    return path


@dataclass(frozen=True)
class Wiring:
    """Values the stack provides, named as the settings fields they fill; a function's
    environment is built from these. Empty: not provided to this function."""

    database_host: str
    database_user: str
    database_name: str
    data_bucket: str
    features_queue_url: str = ""
    artifacts_bucket: str = ""
    training_state_machine_arn: str = ""
    training_image: str = ""
    sagemaker_role_arn: str = ""
    code_version: str = ""
    training_kms_key_id: str = ""
    capture_stream: str = ""
    monitor_queue_url: str = ""
    monitor_function_name: str = ""
    alarm_topic_arn: str = ""
    renewal_state_machine_arn: str = ""


def service_name(function: str) -> str:
    """The function's Powertools service: its logs' "service" and its metrics' dimension."""
    return f"gallop-{function}"


def environment(function: str, wiring: Wiring) -> dict[str, str]:
    """Exactly the variables FUNCTION_SETTINGS[function] asks for; a field the stack has
    no value for fails synthesis, so a new setting cannot be forgotten here."""
    env = {
        "POWERTOOLS_SERVICE_NAME": service_name(function),
        "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE,
    }
    for field in FUNCTION_SETTINGS[function]:
        if field == "database":
            # IAM tokens through RDS Proxy: no password in the function at all.
            env[ENV_DATABASE_HOST] = wiring.database_host
            env[ENV_DATABASE_USER] = wiring.database_user
            env[ENV_DATABASE_NAME] = wiring.database_name
            env[ENV_DATABASE_IAM_AUTH] = "true"
        elif field == "api_key_source":
            env["GALLOP_API_KEY_SOURCE"] = "gateway"
        elif field == "training_launcher":
            # On AWS every run is an execution of the training state machine.
            env[ENV_TRAINING_LAUNCHER] = "stepfunctions"
            for needed in STEPFUNCTIONS_SETTINGS:
                env[env_name(needed)] = _provided(function, wiring, needed)
            if wiring.training_kms_key_id:  # optional: the jobs' output under our own key
                env[env_name("training_kms_key_id")] = wiring.training_kms_key_id
        else:
            env[env_name(field)] = _provided(function, wiring, field)
    return env


def _provided(function: str, wiring: Wiring, field: str) -> str:
    value = getattr(wiring, field, "")
    if not value:
        raise KeyError(f"the stack does not provide setting {field!r} to the {function} function")
    return value


@dataclass(frozen=True)
class Placement:
    vpc: ec2.IVpc
    security_groups: list[ec2.ISecurityGroup]


def _log_group(scope: Construct, id: str) -> logs.LogGroup:
    # Retention: the stage's, for every log group (infra.stack.LogRetention).
    return logs.LogGroup(scope, f"{id}Logs", removal_policy=RemovalPolicy.DESTROY)


def _common(
    scope: Construct,
    id: str,
    function: str,
    wiring: Wiring,
    placement: Placement | None,
    memory_mb: int,
    timeout: Duration,
    description: str,
    reserved_concurrency: int | None = None,
) -> dict[str, object]:
    """What every gallop function shares: explicit size and timeout, X-Ray, a log group
    with retention, and the environment its code requires; private subnets for those
    with a placement (the ones that reach the database)."""
    common: dict[str, object] = {
        "description": description,
        "architecture": lambda_.Architecture.X86_64,
        "memory_size": memory_mb,
        "timeout": timeout,
        "tracing": lambda_.Tracing.ACTIVE,
        "environment": environment(function, wiring),
        "log_group": _log_group(scope, id),
        "reserved_concurrent_executions": reserved_concurrency,
    }
    if placement is not None:
        common["vpc"] = placement.vpc
        common["vpc_subnets"] = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        common["security_groups"] = placement.security_groups
    return common


def zip_function(
    scope: Construct,
    id: str,
    *,
    function: str,
    layers: list[lambda_.ILayerVersion],
    wiring: Wiring,
    placement: Placement | None,
    memory_mb: int,
    timeout: Duration,
    description: str,
    reserved_concurrency: int | None = None,
) -> lambda_.Function:
    """A zip function on python3.12; placement None: outside the VPC (it reaches only
    AWS APIs, so it needs no network interfaces and no NAT)."""
    return lambda_.Function(
        scope,
        id,
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="handler.handler",
        code=lambda_.Code.from_asset(build_path("lambda", function)),
        layers=layers,
        **_common(  # type: ignore[arg-type]
            scope,
            id,
            function,
            wiring,
            placement,
            memory_mb,
            timeout,
            description,
            reserved_concurrency,
        ),
    )


def image_function(
    scope: Construct,
    id: str,
    *,
    function: str,
    wiring: Wiring,
    placement: Placement,
    memory_mb: int,
    timeout: Duration,
    description: str,
    reserved_concurrency: int | None = None,
) -> lambda_.DockerImageFunction:
    """pandas + pyarrow do not fit a zip function: these run the data image (built by
    `cdk deploy` from build/images/data; synthesis needs no Docker)."""
    return lambda_.DockerImageFunction(
        scope,
        id,
        code=lambda_.DockerImageCode.from_image_asset(
            dependencies_path(scope, "images", "data"),
            cmd=[f"{function}.handler.handler"],
            # The wheels inside are x86_64: build that, even on an ARM machine.
            platform=ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_EXCLUDE,
        ),
        **_common(  # type: ignore[arg-type]
            scope,
            id,
            function,
            wiring,
            placement,
            memory_mb,
            timeout,
            description,
            reserved_concurrency,
        ),
    )


def layer(scope: Construct, id: str, name: str, description: str) -> lambda_.LayerVersion:
    return lambda_.LayerVersion(
        scope,
        id,
        code=lambda_.Code.from_asset(dependencies_path(scope, "layers", name)),
        compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
        compatible_architectures=[lambda_.Architecture.X86_64],
        description=description,
    )
