"""The CDK app, proven by synthesis: real templates, asserted property by property."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk.assertions import Annotations, Match, Template  # noqa: E402

from gallop.settings import FUNCTION_SETTINGS, Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack() -> Any:
    # Function code and the image context are copied in place; synthesis needs no wheels
    # and no Docker (the image is built by cdk deploy).
    subprocess.run([sys.executable, "layers/build.py", "--code-only"], cwd=ROOT, check=True)
    from infra.app import build
    from infra.functions import CODE_ONLY

    _, gallop = build({"aws:cdk:disable-asset-staging": True, CODE_ONLY: True})
    return gallop


@pytest.fixture(scope="module")
def template(stack: Any) -> Template:
    return Template.from_stack(stack)


def resources(template: Template, kind: str) -> dict[str, dict]:
    return template.find_resources(kind)


def test_cdk_nag_finds_nothing_unsuppressed(stack: Any, template: Template) -> None:
    annotations = Annotations.from_stack(stack)
    for pack in ("AwsSolutions-.*", "Serverless-.*"):
        errors = annotations.find_error("*", Match.string_like_regexp(pack))
        warnings = annotations.find_warning("*", Match.string_like_regexp(pack))
        assert errors == [] and warnings == [], [str(e.entry.data)[:120] for e in errors + warnings]


def test_every_suppression_carries_a_reason(template: Template) -> None:
    body = template.to_json()
    holders = [r.get("Metadata", {}) for r in body["Resources"].values()]
    holders.append(body.get("Metadata", {}))  # stack-wide suppressions live here
    rules = [rule for m in holders if "cdk_nag" in m for rule in m["cdk_nag"]["rules_to_suppress"]]
    assert any(rule["id"] == "AwsSolutions-IAM5" for rule in rules), "stack-wide ones were read"
    for rule in rules:
        assert len(rule["reason"]) >= 40, rule


def test_buckets_are_encrypted_private_and_ssl_only(template: Template) -> None:
    buckets = resources(template, "AWS::S3::Bucket")
    assert len(buckets) == 3  # data, artifacts, their access logs
    for bucket in buckets.values():
        props = bucket["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    kms = [b for b in buckets.values() if "LoggingConfiguration" in b["Properties"]]
    assert len(kms) == 2, "data and artifacts buckets log access"
    for bucket in kms:
        rule = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    policies = resources(template, "AWS::S3::BucketPolicy")
    ssl_only = [
        p
        for p in policies.values()
        if any(
            s["Effect"] == "Deny"
            and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        )
    ]
    assert len(ssl_only) == len(buckets)


def test_uploads_and_quarantine_expire_and_models_are_kept(template: Template) -> None:
    rules = [
        b["Properties"].get("LifecycleConfiguration", {}).get("Rules", [])
        for b in resources(template, "AWS::S3::Bucket").values()
    ]
    prefixes = {r.get("Prefix"): r.get("ExpirationInDays") for rs in rules for r in rs}
    assert prefixes["raw/"] == 30 and prefixes["quarantine/"] == 90
    artifacts = [rs for rs in rules if rs and all("ExpirationInDays" not in r for r in rs)]
    assert artifacts, "the artifacts bucket expires nothing"


def test_keys_rotate(template: Template) -> None:
    keys = resources(template, "AWS::KMS::Key")
    assert keys and all(k["Properties"]["EnableKeyRotation"] for k in keys.values())


def test_every_work_queue_has_a_dead_letter_queue_and_all_are_encrypted(
    template: Template,
) -> None:
    queues = resources(template, "AWS::SQS::Queue")
    dlq_ids = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    work = [i for i, q in queues.items() if "RedrivePolicy" in q["Properties"]]
    assert len(work) == 2 and len(dlq_ids) == 2
    assert set(queues) == set(work) | dlq_ids, "every queue is a work queue or a DLQ"
    for queue in queues.values():
        assert "KmsMasterKeyId" in queue["Properties"]
    for queue in (queues[i] for i in work):
        assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 3


def test_only_raw_uploads_notify_the_ingest_queue(template: Template) -> None:
    (notifications,) = resources(template, "Custom::S3BucketNotifications").values()
    (config,) = notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    assert config["Filter"] == {"Key": {"FilterRules": [{"Name": "prefix", "Value": "raw/"}]}}


def test_queue_driven_functions_report_partial_batch_failures(template: Template) -> None:
    mappings = resources(template, "AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 2
    for mapping in mappings.values():
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def gallop_functions(template: Template) -> dict[str, dict]:
    """Our functions, by name (their Powertools service name says which they are)."""
    found = {}
    for resource in resources(template, "AWS::Lambda::Function").values():
        env = resource["Properties"].get("Environment", {}).get("Variables", {})
        service = env.get("POWERTOOLS_SERVICE_NAME", "")
        if service.startswith("gallop-"):
            found[service.removeprefix("gallop-")] = resource["Properties"]
    return found


def test_every_function_is_sized_traced_and_configured_as_its_code_requires(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    functions = gallop_functions(template)
    assert set(functions) == set(FUNCTION_SETTINGS)
    sizes = {name: (props["MemorySize"], props["Timeout"]) for name, props in functions.items()}
    assert sizes == {
        "api": (1024, 29),
        "migrate": (512, 300),
        "ingest": (3008, 300),
        "features": (4096, 600),
    }
    for name, props in functions.items():
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        assert props["VpcConfig"]["SubnetIds"], name
        # The very check the handler runs at cold start, on the synthesised environment
        # (tokens such as bucket names stand in as placeholders).
        for variable in [k for k in os.environ if k.startswith("GALLOP_") or k == "DATABASE_URL"]:
            monkeypatch.delenv(variable)
        env = {
            k: v if isinstance(v, str) else "resolved-at-deploy"
            for k, v in props["Environment"]["Variables"].items()
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        Settings().require_for(name)  # raises, naming the variable, if the stack forgot one
        assert "DATABASE_URL" not in env, "no credentials in plain environment variables"


def test_the_data_functions_run_the_image_and_the_others_are_zips(template: Template) -> None:
    functions = gallop_functions(template)
    for name in ("ingest", "features"):
        assert functions[name]["PackageType"] == "Image"
        assert functions[name]["ImageConfig"]["Command"] == [f"{name}.handler.handler"]
    assert len(functions["api"]["Layers"]) == 3 and len(functions["migrate"]["Layers"]) == 2
    for name in ("api", "migrate"):
        assert functions[name]["Runtime"] == "python3.12"
    assert (ROOT / "build" / "images" / "data" / "Dockerfile").is_file()


# Actions AWS offers no resource-level permission for, each with the reason.
STAR_RESOURCE_JUSTIFIED = {
    "xray:PutTraceSegments": "X-Ray tracing has no resource-level permissions",
    "xray:PutTelemetryRecords": "X-Ray tracing has no resource-level permissions",
}


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_wildcard_actions_and_star_resources_only_where_aws_requires(
    template: Template,
) -> None:
    documents = [
        p["Properties"]["PolicyDocument"] for p in resources(template, "AWS::IAM::Policy").values()
    ]
    for role in resources(template, "AWS::IAM::Role").values():
        documents += [p["PolicyDocument"] for p in role["Properties"].get("Policies", [])]
    statements = [s for d in documents for s in d["Statement"]]
    assert len(statements) > 10
    for statement in statements:
        actions = listed(statement["Action"])
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), statement
        if "*" in listed(statement.get("Resource")):
            unjustified = [a for a in actions if a not in STAR_RESOURCE_JUSTIFIED]
            assert unjustified == [], statement


def test_no_resource_policy_opens_anything_to_everyone(template: Template) -> None:
    kinds = {
        "AWS::S3::BucketPolicy": "PolicyDocument",
        "AWS::SNS::TopicPolicy": "PolicyDocument",
        "AWS::SQS::QueuePolicy": "PolicyDocument",
        "AWS::KMS::Key": "KeyPolicy",
    }
    checked = 0
    for kind, field in kinds.items():
        for resource in resources(template, kind).values():
            for statement in resource["Properties"][field]["Statement"]:
                principal = statement.get("Principal")
                everyone = principal == "*" or (
                    isinstance(principal, dict) and "*" in listed(principal.get("AWS"))
                )
                if statement["Effect"] == "Allow" and everyone:
                    raise AssertionError(f"{kind} allows everyone: {statement}")
                checked += 1
    assert checked > 10


def test_s3_grants_are_limited_to_the_prefixes_each_function_uses(template: Template) -> None:
    puts: dict[str, set[str]] = {}
    for policy in resources(template, "AWS::IAM::Policy").values():
        roles = [r["Ref"] for r in policy["Properties"].get("Roles", [])]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "s3:PutObject" in listed(statement["Action"]):
                for resource in listed(statement["Resource"]):
                    suffix = resource["Fn::Join"][1][-1] if isinstance(resource, dict) else resource
                    for role in roles:
                        puts.setdefault(role, set()).add(suffix)
    by_prefix = sorted(suffix for suffixes in puts.values() for suffix in suffixes)
    assert by_prefix == ["/curated/*", "/features/*", "/quarantine/*", "/raw/*"], puts


def test_every_api_method_needs_a_key_and_clients_are_throttled(template: Template) -> None:
    methods = resources(template, "AWS::ApiGateway::Method")
    assert methods
    for method in methods.values():
        assert method["Properties"]["ApiKeyRequired"] is True
        assert method["Properties"]["AuthorizationType"] == "NONE"  # keys, not IAM/Cognito
        assert "RequestValidatorId" in method["Properties"]
    template.has_resource_properties(
        "AWS::ApiGateway::UsagePlan",
        {
            "Throttle": {"RateLimit": Match.any_value(), "BurstLimit": Match.any_value()},
            "Quota": Match.object_like({"Period": "MONTH"}),
        },
    )
    template.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "AccessLogSetting": Match.object_like({"DestinationArn": Match.any_value()}),
            "TracingEnabled": True,
        },
    )
    (stage_id,) = resources(template, "AWS::ApiGateway::Stage")
    (api_id,) = resources(template, "AWS::ApiGateway::RestApi")
    (association,) = resources(template, "AWS::WAFv2::WebACLAssociation").values()
    arn_parts = association["Properties"]["ResourceArn"]["Fn::Join"][1]
    assert arn_parts[-2:] == ["/stages/", {"Ref": stage_id}], "the firewall guards our stage"
    (plan,) = resources(template, "AWS::ApiGateway::UsagePlan").values()
    (linked,) = plan["Properties"]["ApiStages"]
    assert (linked["ApiId"], linked["Stage"]) == ({"Ref": api_id}, {"Ref": stage_id})


def test_the_database_is_private_encrypted_rotated_and_behind_a_proxy(template: Template) -> None:
    template.has_resource_properties(
        "AWS::RDS::DBCluster",
        {
            "Engine": "aurora-postgresql",
            "StorageEncrypted": True,
            "DeletionProtection": True,
            "ServerlessV2ScalingConfiguration": Match.any_value(),
        },
    )
    template.has_resource_properties(
        "AWS::RDS::DBProxy",
        {
            "RequireTLS": True,
            "Auth": [Match.object_like({"IAMAuth": "REQUIRED"})],
        },
    )
    # Functions connect with IAM tokens (rds-db:connect) and never read the secret.
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert sum("rds-db:connect" in listed(s["Action"]) for s in statements) == len(
        FUNCTION_SETTINGS
    )
    for name, props in gallop_functions(template).items():
        assert props["Environment"]["Variables"]["GALLOP_DATABASE_IAM_AUTH"] == "true", name
    template.resource_count_is("AWS::SecretsManager::RotationSchedule", 1)
    # Migrations run on deploy, and again whenever the migration files change; only once
    # the writer, the proxy's target and the security group rules exist.
    (schema,) = resources(template, "AWS::CloudFormation::CustomResource").values()
    assert len(schema["Properties"]["migrations"]) == 16
    needs = set(schema.get("DependsOn", []))
    for kind in (
        "AWS::RDS::DBInstance",
        "AWS::RDS::DBProxyTargetGroup",
        "AWS::EC2::SecurityGroupIngress",
    ):
        assert set(resources(template, kind)) <= needs, kind
    # Functions reach the proxy, the proxy reaches the cluster, nothing else does.
    ingress = [
        r["Properties"] for r in resources(template, "AWS::EC2::SecurityGroupIngress").values()
    ]
    assert all("SourceSecurityGroupId" in rule for rule in ingress)
    assert all("CidrIp" not in rule for rule in ingress)


def test_alarms_cover_errors_throttles_dead_letters_and_the_api(template: Template) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm").values()
    metrics = [
        (a["Properties"].get("Namespace"), a["Properties"].get("MetricName")) for a in alarms
    ]
    functions = len(FUNCTION_SETTINGS)
    assert metrics.count(("AWS/Lambda", "Errors")) == functions
    assert metrics.count(("AWS/Lambda", "Throttles")) == functions
    assert metrics.count(("AWS/SQS", "ApproximateNumberOfMessagesVisible")) == 2
    assert ("AWS/ApiGateway", "5XXError") in metrics and ("AWS/ApiGateway", "Latency") in metrics
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"], "every alarm notifies the topic"
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    # CloudWatch may publish to the topic and use its key, for our alarms only.
    cloudwatch = {"Service": "cloudwatch.amazonaws.com"}
    (topic_policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    statements = topic_policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Allow"
        and s["Principal"] == cloudwatch
        and s["Action"] == "sns:Publish"
        and "aws:SourceArn" in s["Condition"]["ArnLike"]
        for s in statements
    )
    key_statements = [
        s
        for k in resources(template, "AWS::KMS::Key").values()
        for s in k["Properties"]["KeyPolicy"]["Statement"]
    ]
    assert any(
        s.get("Principal") == cloudwatch and "kms:Decrypt" in listed(s["Action"])
        for s in key_statements
    )


def test_bundles_fit_lambda_limits_and_the_inference_budget() -> None:
    # The real build: pinned manylinux wheels from the package index (cached in build/).
    done = subprocess.run(
        [sys.executable, "layers/build.py"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    import json

    sizes = json.loads((ROOT / "build" / "sizes.json").read_text())
    assert sizes["inference path"]["total_mb"] <= 150
    for name in ("api", "migrate"):
        assert sizes[name]["total_mb"] <= 250
    # No boto3 in any layer: the runtime provides it.
    assert not list((ROOT / "build" / "layers").glob("*/python/boto3"))
    # The API function's layers really lack pandas, onnxruntime is only in inference.
    assert not (ROOT / "build" / "layers" / "web" / "python" / "pandas").exists()
    assert (ROOT / "build" / "layers" / "inference" / "python" / "onnxruntime").is_dir()


def python_3_12() -> str | None:
    """A real python3.12 interpreter (pyenv's shims only dispatch), or None."""
    candidates = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    candidates += [Path(p) for p in (shutil.which("python3.12"), "/usr/bin/python3.12") if p]
    for candidate in candidates:
        ok = (
            subprocess.run(
                [str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                capture_output=True,
            ).returncode
            == 0
        )
        if ok:
            return str(candidate)
    return None


RUNTIME_PACKAGES = ["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"]


@pytest.fixture(scope="module")
def lambda_runtime_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the python3.12 Lambda runtime brings on its own (boto3 and its dependencies),
    taken from this environment: all pure Python."""
    import boto3

    site = Path(boto3.__file__).parents[1]
    runtime = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        (runtime / name).symlink_to(site / name)
    return runtime


@pytest.mark.parametrize(
    ("function", "paths", "also"),
    [
        (
            "api",
            ["lambda/api", "layers/web/python", "layers/db/python", "layers/numpy/python"],
            "import psycopg, sqlalchemy.dialects.postgresql.psycopg",
        ),
        (
            "migrate",
            ["lambda/migrate", "layers/web/python", "layers/db/python"],
            "import psycopg, alembic",
        ),
        (
            "ingest",
            ["images/data/functions", "images/data", "images/data/site-packages"],
            "import pandas, pyarrow.parquet, psycopg",
        ),
        (
            "features",
            ["images/data/functions", "images/data", "images/data/site-packages"],
            "import pandas, pyarrow.parquet, psycopg",
        ),
        (
            "inference path",
            ["layers/web/python", "layers/numpy/python", "layers/inference/python"],
            "import onnxruntime, numpy, fastapi, mangum, gallop_probe",
        ),
    ],
)
def test_each_bundle_imports_on_python_3_12_with_nothing_else(
    function: str, paths: list[str], also: str, lambda_runtime_packages: Path, tmp_path: Path
) -> None:
    python = python_3_12()
    if python is None:
        pytest.skip("no python3.12 here (the Lambda runtime's version) to import the bundles")
    test_bundles_fit_lambda_limits_and_the_inference_budget()  # the real, complete build
    (tmp_path / "gallop_probe.py").write_text("")
    path = [str(ROOT / "build" / p) for p in paths] + [str(lambda_runtime_packages), str(tmp_path)]
    handler = {
        "api": "handler",
        "migrate": "handler",
        "ingest": "ingest.handler",
        "features": "features.handler",
    }.get(function)
    code = (f"import {handler}; " if handler else "") + also
    env = {
        "PYTHONPATH": os.pathsep.join(path),
        "PATH": os.environ["PATH"],
        "DATABASE_URL": "postgresql+psycopg://u@db.invalid/gallop",
        "GALLOP_DATA_BUCKET": "b",
        "GALLOP_API_KEY_SOURCE": "gateway",
        "GALLOP_FEATURES_QUEUE_URL": "https://sqs.invalid/q",
        "AWS_REGION": "us-east-1",
    }
    # -S: no site-packages at all, so only the bundle and the runtime's packages are there.
    done = subprocess.run([python, "-S", "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]


def test_a_code_only_build_cannot_be_deployed(tmp_path: Path) -> None:
    # Without the synthesis-only flag, layers must hold installed dependencies: point the
    # app at a code-only build and synthesis refuses, naming the command to run.
    import infra.functions as functions
    from infra.app import build

    code_only = tmp_path / "build"
    subprocess.run(
        [sys.executable, "layers/build.py", "--code-only", "--out", str(code_only)],
        cwd=ROOT,
        check=True,
    )
    real = functions.BUILD
    functions.BUILD = code_only
    try:
        with pytest.raises(Exception, match="holds no installed dependencies"):
            build({"aws:cdk:disable-asset-staging": True})
    finally:
        functions.BUILD = real
