"""The CDK app, proven by synthesis: real templates, asserted property by property."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk.assertions import Annotations, Match, Template  # noqa: E402

from gallop.settings import FUNCTION_SETTINGS, Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# checkov pins old boto3 and packaging: it lives in a virtualenv of its own (Makefile).
CHECKOV_BIN = Path(sys.prefix) / "checkov" / "bin" / "checkov"
CHECKOV_TARGET = ".venv/checkov/bin/checkov"  # the Makefile's target (`make test` builds it)
# Where the tests deploy to: any account and region will do, but one must be given.
TEST_ACCOUNT, TEST_REGION = "123456789012", "eu-west-1"
# What each stage is deployed with (prod refuses to deploy without an alarm subscriber);
# dev with a key besides the first and a shorter wait for approvals, prod with the defaults.
OPS_KEY = {"name": "ops", "roles": "reader+approver"}
STAGE_CONTEXT: dict[str, dict[str, Any]] = {
    "dev": {"api_keys": [OPS_KEY], "approval_timeout_hours": 48},
    "prod": {"alarm_email": "ops@example.com", "alarm_webhook": "https://hooks.example.com/g"},
}


def cdk_json_context() -> dict[str, Any]:
    """The context `cdk` passes the app from cdk.json (the feature flags)."""
    return json.loads((ROOT / "cdk.json").read_text())["context"]


def build_app(**context: Any) -> Any:
    """The app as `cdk synth -c ...` builds it, with no asset staging and code-only
    bundles."""
    from infra.app import build
    from infra.functions import CODE_ONLY

    base = {**cdk_json_context(), "aws:cdk:disable-asset-staging": True, CODE_ONLY: True}
    return build({**base, **context})


def synthesisable(stage: str = "prod", **context: Any) -> Any:
    where = {"account": TEST_ACCOUNT, "region": TEST_REGION}
    return build_app(stage=stage, **where, **STAGE_CONTEXT[stage], **context)[1]


@pytest.fixture(scope="module")
def stacks() -> dict[str, Any]:
    """Each stage, synthesised once for the module."""
    # Function code and the image context are copied in place; synthesis needs no wheels
    # and no Docker (the image is built by cdk deploy).
    subprocess.run([sys.executable, "layers/build.py", "--code-only"], cwd=ROOT, check=True)
    return {stage: synthesisable(stage) for stage in STAGE_CONTEXT}


@pytest.fixture(scope="module")
def templates(stacks: dict[str, Any]) -> dict[str, Template]:
    return {stage: Template.from_stack(stack) for stage, stack in stacks.items()}


@pytest.fixture(scope="module")
def stack(stacks: dict[str, Any]) -> Any:
    return stacks["prod"]


@pytest.fixture(scope="module")
def template(templates: dict[str, Template]) -> Template:
    return templates["prod"]


def resources(template: Template, kind: str) -> dict[str, dict]:
    return template.find_resources(kind)


@pytest.mark.parametrize("stage", STAGE_CONTEXT)
def test_cdk_nag_finds_nothing_unsuppressed(
    stage: str, stacks: dict[str, Any], templates: dict[str, Template]
) -> None:
    # (Each stage is synthesised for an account and region: its ARNs carry them literally,
    # and every suppression must still apply.)
    annotations = Annotations.from_stack(stacks[stage])
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
    assert prefixes["capture/"] == 400 and prefixes["capture-errors/"] == 90
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
    assert len(work) == 3 and len(dlq_ids) == 3  # ingest, features, monitor
    # Where failures end besides: a monitor run's (Lambda's on-failure destination) and
    # events EventBridge could not deliver (its targets' dead-letter queues).
    failures = {
        rendered(c["Properties"]["DestinationConfig"]["OnFailure"]["Destination"])
        for c in resources(template, "AWS::Lambda::EventInvokeConfig").values()
    } | {
        rendered(target["DeadLetterConfig"]["Arn"])
        for rule in resources(template, "AWS::Events::Rule").values()
        for target in rule["Properties"]["Targets"]
    }
    ends = {f.removeprefix("<").removesuffix(".Arn>") for f in failures}
    assert len(ends) == 2
    assert set(queues) == set(work) | dlq_ids | ends, "every queue is a work queue or a DLQ"
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
    assert len(mappings) == 3
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


def uses_the_database(function: str) -> bool:
    return "database" in FUNCTION_SETTINGS[function]


def test_every_function_is_sized_traced_and_configured_as_its_code_requires(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    functions = gallop_functions(template)
    assert set(functions) == set(FUNCTION_SETTINGS)
    sizes = {name: (props["MemorySize"], props["Timeout"]) for name, props in functions.items()}
    assert sizes == {
        "api": (1024, 29),
        "predict": (1024, 10),
        "migrate": (512, 300),
        "ingest": (3008, 300),
        "features": (4096, 600),
        "training": (512, 300),
        "monitor": (2048, 900),
    }
    for name, props in functions.items():
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        if uses_the_database(name):
            assert props["VpcConfig"]["SubnetIds"], name
        else:  # S3 only: outside the VPC, no network interfaces to attach
            assert "VpcConfig" not in props, name
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


def test_the_data_functions_run_the_image_and_the_others_are_zips(
    stack: Any, template: Template
) -> None:
    functions = gallop_functions(template)
    for name in ("ingest", "features", "monitor"):
        assert functions[name]["PackageType"] == "Image"
        assert functions[name]["ImageConfig"]["Command"] == [f"{name}.handler.handler"]
    layer_names = {
        stack.resolve(layer.layer_version_arn)["Ref"]: name for name, layer in stack.layers.items()
    }
    # (In no particular order: the recommended flag recognizeLayerVersion sorts them, and
    # no two layers hold the same package.)
    layers = {
        name: {layer_names[layer["Ref"]] for layer in props.get("Layers", [])}
        for name, props in functions.items()
    }
    assert layers == {
        "api": {"web", "db", "numpy"},
        # The predict path: no database client (nor pandas, which no layer holds).
        "predict": {"web", "numpy", "inference"},
        "migrate": {"web", "db"},
        "training": {"web", "db"},
        "ingest": set(),
        "features": set(),
        "monitor": set(),
    }
    for name in ("api", "predict", "migrate", "training"):
        assert functions[name]["Runtime"] == "python3.12"
        assert functions[name]["Handler"] == "handler.handler"
    assert (ROOT / "build" / "lambda" / "predict" / "handler.py").read_bytes() == (
        ROOT / "functions" / "predict" / "handler.py"
    ).read_bytes()
    assert (ROOT / "build" / "images" / "data" / "Dockerfile").is_file()
    # The image's CMD names each function's handler: each is in the image as written.
    for name in ("ingest", "features", "monitor"):
        assert (
            ROOT / "build" / "images" / "data" / "functions" / name / "handler.py"
        ).read_bytes() == (ROOT / "functions" / name / "handler.py").read_bytes()


# Actions AWS offers no resource-level permission for, each with the reason.
STAR_RESOURCE_JUSTIFIED = {
    "xray:PutTraceSegments": "X-Ray tracing has no resource-level permissions",
    "xray:PutTelemetryRecords": "X-Ray tracing has no resource-level permissions",
    "xray:GetSamplingRules": "X-Ray tracing (the state machine's) has none either",
    "xray:GetSamplingTargets": "X-Ray tracing (the state machine's) has none either",
    **{
        f"logs:{action}": "state machine logging: CloudWatch Logs' vended log delivery"
        for action in (
            "CreateLogDelivery",
            "GetLogDelivery",
            "UpdateLogDelivery",
            "DeleteLogDelivery",
            "ListLogDeliveries",
            "PutResourcePolicy",
            "DescribeResourcePolicies",
            "DescribeLogGroups",
        )
    },
    "ecr:GetAuthorizationToken": "the training image pull: a registry token, no resource",
    "cloudwatch:PutMetricData": "SageMaker's training metrics; held to its namespace",
    "states:SendTaskSuccess": "answering a task token: the token names the execution",
    "states:SendTaskFailure": "answering a task token: the token names the execution",
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
            if "cloudwatch:PutMetricData" in actions:
                assert statement["Condition"] == {
                    "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}
                }


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


def role_names(template: Template) -> dict[str, str]:
    """Role logical id -> whose it is: a function's name, "sagemaker" for the jobs', "state
    machine" for the training state machine's, "renewal machine" for the renewal one's."""
    (renewal,) = [
        m["Properties"]["RoleArn"]["Fn::GetAtt"][0]
        for m in resources(template, "AWS::StepFunctions::StateMachine").values()
        if m["Properties"].get("StateMachineName", "").endswith("-renewal")
    ]
    names = {}
    for name, props in gallop_functions(template).items():
        names[props["Role"]["Fn::GetAtt"][0]] = name
    for role_id, role in resources(template, "AWS::IAM::Role").items():
        principals = [
            s["Principal"].get("Service")
            for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        ]
        if principals == ["sagemaker.amazonaws.com"]:
            names[role_id] = "sagemaker"
        elif principals == ["states.amazonaws.com"]:
            names[role_id] = "renewal machine" if role_id == renewal else "state machine"
        elif principals == ["firehose.amazonaws.com"]:
            names[role_id] = "capture stream"
    return names


def role_statements(template: Template) -> dict[str, list[dict]]:
    """Each named role's policy statements (its default policy, where CDK puts grants)."""
    names = role_names(template)
    found: dict[str, list[dict]] = {name: [] for name in names.values()}
    for policy in resources(template, "AWS::IAM::Policy").values():
        for role in policy["Properties"].get("Roles", []):
            if role["Ref"] in names:
                found[names[role["Ref"]]] += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def bucket_names(template: Template) -> dict[str, str]:
    """Bucket logical id -> "data" or "artifacts" (the prefix of its access logs)."""
    return {
        bucket_id: bucket["Properties"]["LoggingConfiguration"]["LogFilePrefix"].rstrip("/")
        for bucket_id, bucket in resources(template, "AWS::S3::Bucket").items()
        if "LoggingConfiguration" in bucket["Properties"]
    }


def object_grants(template: Template, action: str) -> dict[str, set[tuple[str, str]]]:
    """Who may do `action` on which objects: name -> {(bucket, "/prefix/*")}."""
    buckets = bucket_names(template)
    grants: dict[str, set[tuple[str, str]]] = {}
    for name, statements in role_statements(template).items():
        for statement in statements:
            if action not in listed(statement["Action"]):
                continue
            for resource in listed(statement["Resource"]):
                parts = resource["Fn::Join"][1] if "Fn::Join" in resource else [resource, ""]
                bucket = buckets[parts[0]["Fn::GetAtt"][0]]
                grants.setdefault(name, set()).add((bucket, parts[-1]))
    return grants


def test_s3_grants_are_limited_to_the_prefixes_each_function_uses(template: Template) -> None:
    assert object_grants(template, "s3:PutObject") == {
        # an upload no dataset claims is moved to unclaimed/
        "ingest": {("data", "/curated/*"), ("data", "/quarantine/*"), ("data", "/unclaimed/*")},
        "features": {("data", "/features/*")},
        # presigned uploads; promotions (aliases/{dataset}/serving.json)
        "api": {("data", "/raw/*"), ("artifacts", "/aliases/*")},
        # a retrain's model becomes the challenger when its run registers it
        "training": {("artifacts", "/models/*"), ("artifacts", "/aliases/*")},
        # every dataset's serving object, written again after migrating
        "migrate": {("artifacts", "/aliases/*")},
        "sagemaker": {("artifacts", "/training/*")},
        # what the predict function captures, as Firehose delivers it
        "capture stream": {("data", "/capture/*"), ("data", "/capture-errors/*")},
        # a model's monitoring page and drift reference, beside its other files
        # ... and the serving object of an automatic promotion or an expired request
        "monitor": {
            ("artifacts", "/models/*/monitoring.html"),
            ("artifacts", "/models/*/monitor_reference.npz"),
            ("artifacts", "/aliases/*"),
        },
    }
    reads = object_grants(template, "s3:GetObject*")
    assert reads["ingest"] - {("data", "")} == {
        ("data", "/raw/*"),
        ("data", "/unclaimed/*"),
        ("data", "/curated/*"),  # an append reads the version it extends
    }
    assert reads["features"] - {("data", "")} == {
        ("data", "/curated/*"),  # a version's data
        ("data", "/features/*"),  # the manifest the online pointer is published from
    }
    assert reads["sagemaker"] == {
        ("data", ""),  # the bucket itself: SageMaker lists a channel's prefix
        ("data", "/features/*"),  # the train channel: a feature set
        ("artifacts", ""),
        ("artifacts", "/training/*"),  # the stack job's bases: the base jobs' output
    }
    assert reads["api"] - {("data", ""), ("artifacts", "")} == {
        ("data", "/features/*"),
        ("data", "/unclaimed/*"),  # lists unclaimed uploads, and copies one back to raw/
        ("artifacts", "/models/*"),  # presigned report links
    }
    assert reads["training"] - {("artifacts", "")} == {
        ("artifacts", "/training/*"),  # the stack job's model.tar.gz
        ("artifacts", "/models/*"),
    }
    assert reads["predict"] - {("data", ""), ("artifacts", "")} == {
        ("artifacts", "/models/*"),  # the model's files
        ("artifacts", "/aliases/*"),  # which model champion and challenger are
        ("data", "/features/*"),  # entity snapshots (state.npz) for race cards
    }
    assert reads["monitor"] - {("data", ""), ("artifacts", "")} == {
        ("data", "/capture/*"),  # what was served
        ("data", "/curated/*"),  # the results that followed
        ("data", "/features/*"),  # the training feature set: the drift reference's sample
        ("artifacts", "/models/*"),  # the model, its manifest and its drift reference
        ("artifacts", "/aliases/*"),  # serving objects
    }
    assert reads["migrate"] - {("artifacts", "")} == {("artifacts", "/aliases/*")}
    assert "capture stream" not in reads, "Firehose only writes"
    assert object_grants(template, "s3:DeleteObject*") == {
        "ingest": {("data", "/raw/*"), ("data", "/unclaimed/*")},
        "api": {("data", "/unclaimed/*")},  # an unclaimed upload once copied back to raw/
        # the objects of the aliases of the whole installation, before they were per dataset
        "migrate": {
            ("artifacts", "/aliases/champion.json"),
            ("artifacts", "/aliases/challenger.json"),
        },
    }


def test_the_predict_function_may_read_its_objects_and_do_nothing_else(
    template: Template,
) -> None:
    statements = role_statements(template)["predict"]
    actions = {a for s in statements for a in listed(s["Action"])}
    # Read (objects, and the key that decrypts them), trace; no write, no database.
    assert actions == {
        "s3:GetObject*",
        "s3:GetBucket*",
        "s3:List*",
        "kms:Decrypt",
        "kms:DescribeKey",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "firehose:PutRecordBatch",  # capture: to its stream only (test_capture_...)
        "apigateway:GET",  # a key's name and roles (test_keys_...)
    }
    (key,) = {rendered(s["Resource"]) for s in statements if "kms:Decrypt" in listed(s["Action"])}
    buckets = resources(template, "AWS::S3::Bucket")
    for bucket_id in bucket_names(template):
        encryption = buckets[bucket_id]["Properties"]["BucketEncryption"]
        rule = encryption["ServerSideEncryptionConfiguration"][0]
        assert rendered(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]) == key
    # Its role has only the basic execution policy (logs): no VPC access policy.
    (role_id,) = [i for i, name in role_names(template).items() if name == "predict"]
    role = resources(template, "AWS::IAM::Role")[role_id]["Properties"]
    (managed,) = role["ManagedPolicyArns"]
    assert rendered(managed).endswith(":policy/service-role/AWSLambdaBasicExecutionRole")


def test_every_api_method_needs_a_key_and_clients_are_throttled(template: Template) -> None:
    from infra.api import PUBLIC_PATHS

    methods = resources(template, "AWS::ApiGateway::Method")
    assert methods
    routes = method_routes(template)
    public = {(f"/{path}", "GET") for path in PUBLIC_PATHS}
    assert public <= set(routes) and {routes[r] for r in public} == {"api"}
    for (route, _), method in zip(routes, methods.values(), strict=True):
        # the API's description and docs only, which the app serves without a key too
        assert method["Properties"]["ApiKeyRequired"] is (route not in {p for p, _ in public})
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


def test_the_gateways_own_errors_are_problems_as_the_apps_are(template: Template) -> None:
    """A missing key, throttling, a WAF block or any other error API Gateway answers
    itself: application/problem+json of the app's shape, with the status it means."""
    from gallop.api.problems import problem as app_problem

    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in resources(template, "AWS::ApiGateway::GatewayResponse").values()
    }
    expected = {
        "INVALID_API_KEY": (401, "unauthorized"),
        "THROTTLED": (429, "throttled"),
        "QUOTA_EXCEEDED": (429, "throttled"),
        "WAF_FILTERED": (403, "forbidden"),
        "MISSING_AUTHENTICATION_TOKEN": (404, "not_found"),
        "REQUEST_TOO_LARGE": (413, "payload_too_large"),
        "DEFAULT_4XX": (400, "bad_request"),
        "DEFAULT_5XX": (500, "internal_error"),
    }
    for kind, (status, code) in expected.items():
        response = responses[kind]
        assert response["StatusCode"] == str(status), kind
        headers = response["ResponseParameters"]
        assert headers["gatewayresponse.header.Content-Type"] == "'application/problem+json'"
        # The template, with API Gateway's variables filled in, is the app's problem shape.
        body = response["ResponseTemplates"]["application/json"]
        filled = body.replace("$context.error.messageString", '"Forbidden"')
        problem = json.loads(filled.replace("$context.requestId", "r-1"))
        assert problem == app_problem(status, "Forbidden") | {"request_id": "r-1"}
        assert problem["code"] == code
    for kind in ("THROTTLED", "QUOTA_EXCEEDED"):
        retry_after = responses[kind]["ResponseParameters"]["gatewayresponse.header.Retry-After"]
        assert int(retry_after.strip("'")) > 0


def method_routes(template: Template) -> dict[tuple[str, str], str]:
    """(path, HTTP method) -> the function it invokes (its name)."""
    api_resources = resources(template, "AWS::ApiGateway::Resource")

    def path(resource: dict[str, Any]) -> str:
        if "Ref" not in resource:  # the root: {"Fn::GetAtt": [api, "RootResourceId"]}
            return ""
        props = api_resources[resource["Ref"]]["Properties"]
        return f"{path(props['ParentId'])}/{props['PathPart']}"

    ids = {i: name for name, i in function_ids(template).items()}
    routes = {}
    for method in resources(template, "AWS::ApiGateway::Method").values():
        props = method["Properties"]
        assert props["Integration"]["Type"] == "AWS_PROXY"
        (target,) = re.findall(r"functions/<(\w+)\.Arn>/", rendered(props["Integration"]["Uri"]))
        routes[(path(props["ResourceId"]) or "/", props["HttpMethod"])] = ids[target]
    return routes


def test_predictions_go_to_the_predict_function_and_the_rest_to_the_api(
    template: Template,
) -> None:
    assert method_routes(template) == {
        ("/", "ANY"): "api",
        ("/{proxy+}", "ANY"): "api",
        ("/v1/{proxy+}", "ANY"): "api",
        ("/v1/predict", "POST"): "predict",
        ("/v1/explain", "POST"): "predict",
        # the API's description and docs, without a key (the test above)
        ("/openapi.json", "GET"): "api",
        ("/docs", "GET"): "api",
        ("/redoc", "GET"): "api",
    }
    # (each method, these two included, is validated, and needs a key: the test above)
    # They are exactly the routes of the predict function's app.
    from gallop.api.serving import router

    to_predict = {route for route, name in method_routes(template).items() if name == "predict"}
    assert {(r.path, m) for r in router.routes for m in r.methods} == to_predict
    # API Gateway may invoke the predict function for exactly those two methods.
    predict = function_ids(template)["predict"]
    sources = {
        tuple(rendered(p["Properties"]["SourceArn"]).rsplit("/", 3)[-3:])
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [predict, "Arn"]}
    }
    assert sources == {("POST", "v1", "predict"), ("POST", "v1", "explain")}


def test_deployed_urls_carry_one_v1_after_the_stage(templates: dict[str, Template]) -> None:
    """{ApiUrl} is https://{api}.execute-api.{region}.{suffix}/{stage}/ and the routes carry
    /v1 themselves: {ApiUrl}v1/health, never {ApiUrl}v1/v1/health."""
    for stage, template in templates.items():
        ((stage_id, api_stage),) = template.find_resources("AWS::ApiGateway::Stage").items()
        assert api_stage["Properties"]["StageName"] == stage
        url = rendered(template.to_json()["Outputs"]["ApiUrl"]["Value"])
        host = rf"https://<\w+>\.execute-api\.{TEST_REGION}\.<AWS::URLSuffix>"
        assert re.fullmatch(rf"{host}/<{stage_id}>/", url), url
        paths = {path for path, _ in method_routes(template)}
        public = {"openapi.json", "docs", "redoc"}  # FastAPI's own, at the app's root
        assert {p.split("/")[1] for p in paths if p != "/"} == {"v1", "{proxy+}", *public}
        assert not any(p.startswith("/v1/v1") for p in paths)


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
    connecting = {
        name
        for name, role in role_statements(template).items()
        if any("rds-db:connect" in listed(s["Action"]) for s in role)
    }
    assert connecting == {f for f in FUNCTION_SETTINGS if uses_the_database(f)}
    assert sum("rds-db:connect" in listed(s["Action"]) for s in statements) == len(connecting)
    assert "predict" not in connecting
    for name, props in gallop_functions(template).items():
        variables = props["Environment"]["Variables"]
        if uses_the_database(name):
            assert variables["GALLOP_DATABASE_IAM_AUTH"] == "true", name
        else:
            assert not any(k.startswith("GALLOP_DATABASE") for k in variables), name
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
    watched = {
        (a["Properties"]["MetricName"], d["Value"]["Ref"])
        for a in alarms
        if a["Properties"].get("Namespace") == "AWS/Lambda"
        for d in a["Properties"]["Dimensions"]
        if d["Name"] == "FunctionName"
    }
    assert watched == {
        (metric, i) for i in function_ids(template).values() for metric in ("Errors", "Throttles")
    }
    # the work queues' dead-letter queues, the monitor's failed runs, undelivered events
    assert metrics.count(("AWS/SQS", "ApproximateNumberOfMessagesVisible")) == 5
    assert metrics.count(("AWS/States", "ExecutionsFailed")) == 1
    assert metrics.count(("AWS/States", "ExecutionsTimedOut")) == 1
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


# -- training ------------------------------------------------------------------------------


def rendered(value: Any) -> str:
    """A CloudFormation string value with its tokens as readable placeholders:
    {"Ref": "X"} -> "<X>", {"Fn::GetAtt": ["X", "Arn"]} -> "<X.Arn>"."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(rendered(part) for part in parts)
    if isinstance(value.get("Fn::Sub"), str):
        return re.sub(r"\$\{([^}]+)\}", r"<\1>", value["Fn::Sub"])
    return f"<{next(iter(value))}>"  # Fn::Select ...: resolved at deploy


def the_state_machine(template: Template, renewal: bool = False) -> tuple[str, dict]:
    """The training state machine (CloudFormation names it), or the renewal one (named)."""
    ((machine_id, machine),) = [
        (i, m)
        for i, m in resources(template, "AWS::StepFunctions::StateMachine").items()
        if ("StateMachineName" in m["Properties"]) is renewal
    ]
    return machine_id, machine["Properties"]


def definition(template: Template, renewal: bool = False) -> dict[str, Any]:
    return json.loads(rendered(the_state_machine(template, renewal)[1]["DefinitionString"]))


def function_ids(template: Template) -> dict[str, str]:
    return {
        props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"].removeprefix("gallop-"): i
        for i, resource in resources(template, "AWS::Lambda::Function").items()
        if (props := resource["Properties"]).get("Environment")
        and "POWERTOOLS_SERVICE_NAME" in props["Environment"]["Variables"]
    }


def sagemaker_role_id(template: Template) -> str:
    (role_id,) = [i for i, name in role_names(template).items() if name == "sagemaker"]
    return role_id


def test_training_runs_base_jobs_in_parallel_then_the_stack_job_then_register(
    template: Template,
) -> None:
    from infra.training import REQUEST_FIELDS

    states = definition(template)["States"]
    start = states[definition(template)["StartAt"]]
    sync = "arn:aws:states:::sagemaker:createTrainingJob.sync"
    # A Map over base_jobs, each item a CreateTrainingJob .sync task with the item's fields.
    assert start["Type"] == "Map" and start["ItemsPath"] == "$.base_jobs"
    assert 1 < start["MaxConcurrency"] <= 10
    assert start["ResultPath"] is None, "the run's input (run_id) goes on unchanged"
    (base,) = start["ItemProcessor"]["States"].values()
    assert base["Resource"] == sync
    assert base["Parameters"] == {f"{f}.$": f"$.{f}" for f in REQUEST_FIELDS}
    # Then the stack job, from stack_job, its result beside the run's input.
    stack = states[start["Next"]]
    assert stack["Resource"] == sync
    assert stack["Parameters"] == {f"{f}.$": f"$.stack_job.{f}" for f in REQUEST_FIELDS}
    assert stack["ResultPath"] == "$.stack"
    # SageMaker refusing to start a job (instance quota, throttling) is waited out
    for job in (base, stack):
        (retry,) = job["Retry"]
        assert retry["ErrorEquals"] == ["SageMaker.AmazonSageMakerException"]
        assert retry["MaxAttempts"] >= 3 and retry["BackoffRate"] > 1
    # Then register: the training function with the stack job's model.tar.gz.
    register = states[stack["Next"]]
    assert register["Resource"] == f"<{function_ids(template)['training']}.Arn>"
    assert register["Parameters"] == {
        "action": "register",
        "run_id.$": "$.run_id",
        "model_artifacts.$": "$.stack.ModelArtifacts.S3ModelArtifacts",
    }
    assert register["End"] is True


def test_a_failed_step_marks_the_run_failed_and_fails_the_execution(template: Template) -> None:
    states = definition(template)["States"]
    steps = [s for s in states.values() if s["Type"] in ("Map", "Task") and "Catch" in s]
    assert len(steps) == 3, "the base jobs, the stack job and register"
    handlers = set()
    for step in steps:
        (catch,) = step["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        assert catch["ResultPath"] == "$.error", "run_id stays beside the error"
        handlers.add(catch["Next"])
    (handler,) = handlers
    failed = states[handler]
    assert failed["Resource"] == f"<{function_ids(template)['training']}.Arn>"
    assert failed["Parameters"] == {
        "action": "failed",
        "run_id.$": "$.run_id",
        "error.$": "$.error",
    }
    assert any(r["ErrorEquals"] == ["States.ALL"] for r in failed["Retry"]), (
        "neither a throttled invocation nor a failing database may leave the run RUNNING"
    )
    assert states[failed["Next"]] == {
        "Type": "Fail",
        "ErrorPath": "$.error.Error",
        "CausePath": "$.error.Cause",
    }


def test_the_training_state_machine_logs_every_execution_and_traces(template: Template) -> None:
    _, machine = the_state_machine(template)
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    logging = machine["LoggingConfiguration"]
    assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is True
    (destination,) = logging["Destinations"]
    group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    group = resources(template, "AWS::Logs::LogGroup")[group_id]["Properties"]
    assert group["LogGroupName"].startswith("/aws/vendedlogs/states/")
    assert group["RetentionInDays"] >= 30


def test_the_state_machine_may_only_run_gallop_jobs_with_the_sagemaker_role(
    template: Template,
) -> None:
    from infra.training import JOB_PREFIX

    statements = role_statements(template)["state machine"]
    by_action = {a: s for s in statements for a in listed(s["Action"])}
    jobs = f"arn:aws:sagemaker:{TEST_REGION}:{TEST_ACCOUNT}:training-job/{JOB_PREFIX}*"
    for action in ("Create", "Describe", "Stop"):
        assert listed(by_action[f"sagemaker:{action}TrainingJob"]["Resource"]) != ["*"]
        assert rendered(by_action[f"sagemaker:{action}TrainingJob"]["Resource"]) == jobs
    assert rendered(by_action["sagemaker:AddTags"]["Resource"]) == jobs
    rule = "rule/StepFunctionsGetEventsForSageMakerTrainingJobsRule"
    for action in ("PutTargets", "PutRule", "DescribeRule"):
        assert rendered(by_action[f"events:{action}"]["Resource"]).endswith(
            f":events:{TEST_REGION}:{TEST_ACCOUNT}:{rule}"
        )
    training = function_ids(template)["training"]
    assert {rendered(r) for r in listed(by_action["lambda:InvokeFunction"]["Resource"])} == {
        f"<{training}.Arn>",
        f"<{training}.Arn>:*",
    }
    # iam:PassRole: in the whole stack, only here, only the jobs' role, only to SageMaker.
    passes = [
        (name, s)
        for name, role in role_statements(template).items()
        for s in role
        if "iam:PassRole" in listed(s["Action"])
    ]
    assert [name for name, _ in passes] == ["state machine"]
    ((_, passing),) = passes
    assert passing["Resource"] == {"Fn::GetAtt": [sagemaker_role_id(template), "Arn"]}
    assert passing["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }


def test_the_sagemaker_role_is_for_gallop_training_jobs_only(template: Template) -> None:
    from infra.training import JOB_PREFIX

    role = resources(template, "AWS::IAM::Role")[sagemaker_role_id(template)]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": TEST_ACCOUNT}
    assert rendered(trust["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(
        f":training-job/{JOB_PREFIX}*"
    )
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    statements = role_statements(template)["sagemaker"]
    actions = {a for s in statements for a in listed(s["Action"])}
    assert not any(a == "*" or a.endswith(":*") for a in actions)
    assert {
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:GetAuthorizationToken",
    } <= actions
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions, "the buckets' key"
    # Logs: SageMaker's own group for training jobs and its streams, nothing else.
    (logs,) = [s for s in statements if "logs:PutLogEvents" in listed(s["Action"])]
    assert {rendered(r).split(":log-group:")[1] for r in logs["Resource"]} == {
        "/aws/sagemaker/TrainingJobs",
        "/aws/sagemaker/TrainingJobs:*",
    }
    # What it may not do: start jobs, pass roles, or touch anything outside training/.
    assert not any(a.startswith(("sagemaker:", "iam:", "states:")) for a in actions)


def api_settings(template: Template, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The api function's settings as its code will read them (tokens as placeholders)."""
    env = gallop_functions(template)["api"]["Environment"]["Variables"]
    for variable in [k for k in os.environ if k.startswith("GALLOP_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(variable)
    for key, value in env.items():
        monkeypatch.setenv(key, rendered(value))
    return Settings().require_for("api")


def test_the_api_launches_runs_on_the_state_machine_with_the_stack_resources(
    stack: Any, template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = api_settings(template, monkeypatch)
    machine_id, _ = the_state_machine(template)
    buckets = {name: i for i, name in bucket_names(template).items()}
    assert settings.training_launcher == "stepfunctions"
    assert settings.training_state_machine_arn == f"<{machine_id}>"
    assert settings.sagemaker_role_arn == f"<{sagemaker_role_id(template)}.Arn>"
    assert settings.artifacts_bucket == f"<{buckets['artifacts']}>"
    assert settings.training_image == (
        f"{TEST_ACCOUNT}.dkr.ecr.{TEST_REGION}.<AWS::URLSuffix>/cdk-hnb659fds-container-assets-"
        f"{TEST_ACCOUNT}-{TEST_REGION}:{stack.training.image.asset_hash}"
    )
    assert settings.code_version == stack.training.image.asset_hash
    assert settings.training_kms_key_id and settings.training_kms_key_id.endswith(".Arn>")
    # It may start executions of exactly that state machine, and pass no role itself.
    statements = role_statements(template)["api"]
    (start,) = [s for s in statements if "states:StartExecution" in listed(s["Action"])]
    assert listed(start["Action"]) == ["states:StartExecution"]
    assert start["Resource"] == {"Ref": machine_id}
    assert not any("iam:PassRole" in listed(s["Action"]) for s in statements)


def resolve(path: str, document: Any) -> Any:
    """A JSONPath of plain field names, as the state machine's Parameters use."""
    for name in path.removeprefix("$").split(".")[1:]:
        document = document[name]
    return document


def parameters(state: dict[str, Any], document: Any) -> dict[str, Any]:
    return {
        key.removesuffix(".$"): resolve(value, document) if key.endswith(".$") else value
        for key, value in state["Parameters"].items()
    }


def test_the_launchers_requests_pass_through_the_state_machine_whole(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the execution input the API's launcher builds with the synthesised settings
    from gallop.metadata.models import TrainingRun
    from gallop.training.config import run_config
    from gallop.training.sagemaker import training_execution_input
    from infra.training import JOB_PREFIX

    settings = api_settings(template, monkeypatch)
    config = run_config("races", "ranking", None, {"folds": 4}, 0.2)
    run = TrainingRun(
        run_id="0123456789abcdef0123",
        version_id="v" * 64,
        spec_hash="s" * 64,
        code_version=settings.code_version,
        config=config,
        attempt=1,
    )
    execution = training_execution_input(run, settings)
    states = definition(template)["States"]
    start = states[definition(template)["StartAt"]]
    (base,) = start["ItemProcessor"]["States"].values()
    stack = states[start["Next"]]
    # WHEN the state machine's tasks take their parameters from it
    # THEN every job is created exactly as the launcher asked ...
    jobs = resolve(start["ItemsPath"], execution)
    assert len(jobs) == len(config["bases"])
    for job in jobs:
        assert parameters(base, job) == job
    assert parameters(stack, execution) == execution["stack_job"]
    register = parameters(
        states[stack["Next"]],
        {**execution, "stack": {"ModelArtifacts": {"S3ModelArtifacts": "s3://b/k.tar.gz"}}},
    )
    assert register == {
        "action": "register",
        "run_id": run.run_id,
        "model_artifacts": "s3://b/k.tar.gz",
    }
    # ... with names the state machine may use, the one role it may pass, channels where
    # the jobs' role may read and output where it may write.
    ids = {name: i for i, name in bucket_names(template).items()}

    def uris(action: str) -> tuple[str, ...]:
        grants = object_grants(template, action)["sagemaker"]
        return tuple(f"s3://<{ids[b]}>{p.removesuffix('*')}" for b, p in grants if p)

    readable, writable = uris("s3:GetObject*"), uris("s3:PutObject")
    for job in [*jobs, execution["stack_job"]]:
        assert job["TrainingJobName"].startswith(JOB_PREFIX) and len(job["TrainingJobName"]) <= 63
        assert job["RoleArn"] == f"<{sagemaker_role_id(template)}.Arn>"
        assert job["OutputDataConfig"]["S3OutputPath"].startswith(writable)
        assert job["OutputDataConfig"]["KmsKeyId"] == settings.training_kms_key_id
        for channel in job["InputDataConfig"]:
            assert channel["DataSource"]["S3DataSource"]["S3Uri"].startswith(readable), channel
    # The stack job reads back what the base jobs wrote.
    (bases,) = [c for c in execution["stack_job"]["InputDataConfig"] if c["ChannelName"] == "bases"]
    assert bases["DataSource"]["S3DataSource"]["S3Uri"].startswith(writable)


def test_the_training_image_context_holds_its_entry_point_and_the_jobs(stack: Any) -> None:
    context = ROOT / "build" / "images" / "training"
    assert (context / "train_entry.py").read_bytes() == (
        ROOT / "layers" / "train_entry.py"
    ).read_bytes()
    for job in ("base", "stack"):
        assert (context / "training_jobs" / f"{job}.py").is_file()
    assert (context / "gallop" / "training" / "contract.py").is_file()
    dockerfile = (context / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/opt/gallop/train_entry.py"]' in dockerfile
    for part in ("site-packages/", "gallop/", "training_jobs/", "train_entry.py"):
        assert f"COPY {part}" in dockerfile
    assert "libgomp1" in dockerfile, "LightGBM needs OpenMP"
    # The stack's training image is built (by cdk deploy) from that context, for x86_64.
    import json

    assembly = stack.node.root.synth()
    (manifest,) = Path(assembly.directory).glob(f"{stack.artifact_id}.assets.json")
    images = json.loads(manifest.read_text())["dockerImages"]
    source = images[stack.training.image.asset_hash]["source"]
    assert source == {"directory": str(context), "platform": "linux/amd64"}


def test_byte_code_left_in_the_image_context_changes_no_code_version(stack: Any) -> None:
    """The image's hash is the code version of every run: importing the context (as the
    tests do) must not make a deploy train everything anew."""
    cache = ROOT / "build" / "images" / "training" / "training_jobs" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "left_over.cpython-312.pyc").write_bytes(b"\x00byte code")
    try:
        again = synthesisable()
    finally:
        shutil.rmtree(cache)
    assert again.training.image.asset_hash == stack.training.image.asset_hash


@pytest.fixture(scope="module")
def race_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small train channel as the features step writes it."""
    import json

    from gallop.features.build import build_features
    from gallop.ingest.canonical import to_parquet
    from gallop.ingest.validate import validate
    from gallop.spec import load_spec
    from gallop.synth.races import generate_races

    spec = load_spec(ROOT / "shared" / "gallop" / "specs" / "races.yaml")
    runners, _ = generate_races(60, seed=5)
    built = build_features(validate(runners.astype(str), spec).canonical, spec)
    channel = tmp_path_factory.mktemp("train")
    (channel / "features.parquet").write_bytes(to_parquet(built.frame))
    (channel / "manifest.json").write_text(json.dumps(built.manifest))
    return channel


def run_training_image_entry(
    tmp_path: Path, hyperparameters: dict[str, str], argv: list[str], channel: Path | None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The image's ENTRYPOINT on a fake /opt/ml, from the context as built (code only:
    this environment's packages stand in for the image's site-packages)."""
    import json

    base = tmp_path / "opt" / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    if channel is not None:
        shutil.copytree(channel, base / "input" / "data" / "train")
    context = ROOT / "build" / "images" / "training"
    env = {**os.environ, "GALLOP_OPT_ML": str(base), "PYTHONPATH": str(context)}
    done = subprocess.run(
        [sys.executable, str(context / "train_entry.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, base


def test_the_training_image_runs_the_job_its_hyperparameter_names(
    stack: Any, race_channel: Path, tmp_path: Path
) -> None:
    # GIVEN a container started as SageMaker starts it, the job named as the launcher does
    hyperparameters = {"job": '"base"', "folds": "2", "num_boost_round": "5"}
    # WHEN it starts THEN the base job ran from the image's own copy, and wrote its model
    done, base = run_training_image_entry(tmp_path, hyperparameters, ["train"], race_channel)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
    assert "gallop: running training_jobs.base" in done.stdout
    assert "#metric oof_ndcg@1=" in done.stdout
    assert (base / "model" / "base.json").is_file()
    assert not (base / "output" / "failure").exists()


@pytest.mark.parametrize(
    ("hyperparameters", "argv", "says"),
    [
        ({"job": '"serve"'}, ["train"], "job='serve': use one of base, stack"),
        ({"model": '"lambdarank"'}, ["train"], "job=None: use one of base, stack"),
        ({"job": '"base"'}, [], "runs as `train`"),
        ({"job": '"base"'}, ["serve"], "runs as `train`"),
    ],
)
def test_a_training_image_started_wrongly_fails_and_says_why(
    stack: Any, hyperparameters: dict[str, str], argv: list[str], says: str, tmp_path: Path
) -> None:
    done, base = run_training_image_entry(tmp_path, hyperparameters, argv, None)
    assert done.returncode == 1
    assert says in (base / "output" / "failure").read_text()
    assert says in done.stderr
    assert "running training_jobs" not in done.stdout


def test_bundles_fit_lambda_limits_and_the_inference_budget() -> None:
    # The real build: pinned manylinux wheels from the package index (cached in build/).
    done = subprocess.run(
        [sys.executable, "layers/build.py"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    import json

    sizes = json.loads((ROOT / "build" / "sizes.json").read_text())
    # The predict function, code and layers: the inference budget, without a database.
    predict = sizes["predict"]
    assert predict["limit_mb"] == 150 and predict["total_mb"] <= 150 and predict["within_limit"]
    assert set(predict["layers_mb"]) == {"web", "numpy", "inference"}
    assert predict["missing"] == []
    assert "inference path" not in sizes, "the predict row is the inference path"
    for name in ("api", "migrate", "training"):
        assert sizes[name]["limit_mb"] == 250 and sizes[name]["total_mb"] <= 250
    # The training image: every package its jobs need, nothing it lacks, and no boto3.
    assert sizes["training image"]["within_limit"] and sizes["training image"]["missing"] == []
    image = ROOT / "build" / "images" / "training" / "site-packages"
    for package in ("lightgbm", "scipy", "onnx", "onnxruntime", "pandas", "pyarrow"):
        assert (image / package).is_dir(), package
    assert not (image / "boto3").exists()
    # No boto3 in any layer: the runtime provides it.
    assert not list((ROOT / "build" / "layers").glob("*/python/boto3"))
    # The API function's layers really lack pandas, onnxruntime is only in inference.
    assert not (ROOT / "build" / "layers" / "web" / "python" / "pandas").exists()
    assert (ROOT / "build" / "layers" / "inference" / "python" / "onnxruntime").is_dir()
    # The predict path's JSON: orjson's own compiled wheel, in the web layer.
    assert list((ROOT / "build" / "layers" / "web" / "python" / "orjson").glob("*.so"))


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


# What the predict function must not import (a test asserts it, in its bundle).
LEAN_PATH_NEVER = ("pandas", "pyarrow", "lightgbm", "scipy", "sklearn", "sqlalchemy")
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
            "training",
            ["lambda/training", "layers/web/python", "layers/db/python"],
            "import psycopg, sqlalchemy.dialects.postgresql.psycopg",
        ),
        (
            # The lean path: nothing heavy imported, even where the bundle had it.
            "predict",
            [
                "lambda/predict",
                "layers/web/python",
                "layers/numpy/python",
                "layers/inference/python",
            ],
            "import sys, onnxruntime, numpy, orjson, gallop_probe; "
            f"heavy = sorted(set({LEAN_PATH_NEVER!r}) & set(sys.modules)); "
            "assert not heavy, heavy",
        ),
        (
            # Not Lambda: the image's own Python, so not even the runtime's boto3.
            "training image",
            ["images/training", "images/training/site-packages"],
            "import train_entry, training_jobs.base, training_jobs.stack, lightgbm, onnx, "
            "onnxruntime, scipy.optimize, numpy, xgboost, catboost; "
            # the optional families fit without what the image leaves out of them
            "x, y = numpy.arange(8.0).reshape(4, 2), [0.0, 1.0, 0.0, 1.0]; "
            "xgboost.train({'nthread': 1}, xgboost.DMatrix(x, label=y), 2); "
            "catboost.CatBoost({'iterations': 2, 'verbose': False, 'thread_count': 1, "
            "'allow_writing_files': False}).fit(x, y)",
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
    runtime = [] if function == "training image" else [str(lambda_runtime_packages)]
    path = [str(ROOT / "build" / p) for p in paths] + runtime + [str(tmp_path)]
    handler = {
        "api": "handler",
        "predict": "handler",
        "migrate": "handler",
        "training": "handler",
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
        "GALLOP_MONITOR_QUEUE_URL": "https://sqs.invalid/m",
        "GALLOP_MONITOR_FUNCTION_NAME": "monitor",
        "GALLOP_CAPTURE_STREAM": "capture",
        "GALLOP_ARTIFACTS_BUCKET": "a",
        "AWS_REGION": "us-east-1",
    }
    if function == "predict":  # it must start without any database configuration
        del env["DATABASE_URL"]
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
        where = {"stage": "dev", "account": TEST_ACCOUNT, "region": TEST_REGION}
        with pytest.raises(Exception, match="holds no installed dependencies"):
            build({"aws:cdk:disable-asset-staging": True, **where})
    finally:
        functions.BUILD = real


# -- stages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "says"),
    [
        ({"account": TEST_ACCOUNT, "region": TEST_REGION}, "no stage given"),
        ({"stage": "staging", "account": TEST_ACCOUNT, "region": TEST_REGION}, "unknown stage"),
        ({"stage": "dev", "region": TEST_REGION}, "no account given"),
        ({"stage": "dev", "account": TEST_ACCOUNT}, "no region given"),
        ({"stage": "dev", "account": "12345", "region": TEST_REGION}, "12-digit"),
        ({"stage": "prod", "account": TEST_ACCOUNT, "region": TEST_REGION}, "needs someone"),
        (
            {
                "stage": "prod",
                "account": TEST_ACCOUNT,
                "region": TEST_REGION,
                "alarm_webhook": "http://x",
            },
            "must be an https:// URL",
        ),
        (
            {"stage": "dev", "account": TEST_ACCOUNT, "region": TEST_REGION, "alarm_email": "ops"},
            "not an e-mail address",
        ),
        *[
            ({"stage": "dev", "account": TEST_ACCOUNT, "region": TEST_REGION, **bad}, says)
            for bad, says in (
                (
                    {"api_keys": [{"name": "ops", "roles": "reader+admin"}]},
                    "roles 'reader\\+admin'",
                ),
                ({"api_keys": [{"name": "ops", "roles": ""}]}, "roles '' are not"),
                ({"api_keys": [{"name": "o p", "roles": "reader"}]}, "api key name 'o p'"),
                ({"api_keys": [OPS_KEY, OPS_KEY]}, "name a key twice"),
                ({"api_keys": [{"name": "ops"}]}, "a list of"),
                ({"api_keys": "[{"}, "api_keys is not JSON"),
                ({"approval_timeout_hours": 0}, "approval_timeout_hours 0.0 is not in"),
                ({"approval_timeout_hours": "soon"}, "'soon' is not a number"),
            )
        ],
    ],
)
def test_a_deployment_missing_what_it_needs_is_refused_and_says_what_to_pass(
    context: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.stages import DeploymentRefused

    # The CLI sets these from the credentials it runs with; here there are none.
    monkeypatch.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
    monkeypatch.delenv("CDK_DEFAULT_REGION", raising=False)
    with pytest.raises(DeploymentRefused, match=says):
        build_app(**context)


def test_the_clis_account_and_region_are_used_when_the_context_gives_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infra.app import deployment

    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "210987654321")
    monkeypatch.setenv("CDK_DEFAULT_REGION", "ap-southeast-2")
    import aws_cdk as cdk

    target = deployment(cdk.App(context={"stage": "dev"}))
    assert (target.account, target.region, target.stack_name) == (
        "210987654321",
        "ap-southeast-2",
        "Gallop-dev",
    )
    # The context wins over the CLI's defaults.
    target = deployment(cdk.App(context={"stage": "dev", "region": "eu-central-1"}))
    assert target.region == "eu-central-1"


def test_each_stage_is_its_own_stack_where_it_was_told_to_be(stacks: dict[str, Any]) -> None:
    for stage, stack in stacks.items():
        assert stack.stack_name == f"Gallop-{stage}"
        assert (stack.account, stack.region) == (TEST_ACCOUNT, TEST_REGION)


def test_nothing_needs_a_lookup_in_the_account_at_synthesis(stacks: dict[str, Any]) -> None:
    """A lookup would need credentials at synthesis and a cache in cdk.context.json per
    account and region; the zones come from Fn::GetAZs at deploy time instead."""
    for stack in stacks.values():
        assembly = stack.node.root.synth()
        manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
        assert manifest.get("missing") is None, manifest["missing"]
        template = Template.from_stack(stack).to_json()
        subnets = [
            r["Properties"]["AvailabilityZone"]
            for r in template["Resources"].values()
            if r["Type"] == "AWS::EC2::Subnet"
        ]
        assert subnets and all("Fn::Select" in zone for zone in subnets)
    # Should a lookup be added, its cache must be committed, not ignored.
    ignored = subprocess.run(["git", "check-ignore", "-q", "cdk.context.json"], cwd=ROOT)
    assert ignored.returncode == 1


def test_dev_and_prod_can_live_side_by_side_in_one_account(
    templates: dict[str, Template],
) -> None:
    """Physical names that CloudFormation does not generate must differ between stages."""
    named = {
        "AWS::ApiGateway::RestApi": "Name",
        "AWS::RDS::DBProxy": "DBProxyName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::S3::Bucket": "BucketName",
        "AWS::StepFunctions::StateMachine": "StateMachineName",
        "AWS::WAFv2::WebACL": "Name",
    }
    names: dict[str, list[str]] = {}
    for stage, template in templates.items():
        found = []
        for kind, field in named.items():
            for resource in template.find_resources(kind).values():
                name = resource["Properties"].get(field)
                # (a name made of another resource's generated name is unique already)
                if isinstance(name, str):
                    found.append(f"{kind} {name}")
        names[stage] = found
    assert len(names["prod"]) >= 3, "the API, the proxy and the state machine's log group"
    assert set(names["dev"]).isdisjoint(names["prod"])


def test_stage_settings_reach_their_resources(templates: dict[str, Template]) -> None:
    from infra.stages import STAGES

    for name, template in templates.items():
        stage = STAGES[name]
        template.resource_count_is("AWS::EC2::NatGateway", stage.nat_gateways)
        template.resource_count_is("AWS::RDS::DBInstance", 1 + stage.database_readers)
        template.has_resource_properties(
            "AWS::RDS::DBCluster",
            {
                "ServerlessV2ScalingConfiguration": {
                    "MinCapacity": stage.database_min_acu,
                    "MaxCapacity": stage.database_max_acu,
                },
                "DeletionProtection": not stage.destroys_data,
            },
        )
        groups = template.find_resources("AWS::Logs::LogGroup").values()
        assert {g["Properties"]["RetentionInDays"] for g in groups} == {stage.log_retention_days}
        functions = gallop_functions(template)
        concurrency = {n: p.get("ReservedConcurrentExecutions") for n, p in functions.items()}
        assert concurrency["api"] == stage.api_concurrency
        assert concurrency["predict"] == stage.predict_concurrency
        kept = "Retain" if not stage.destroys_data else "Delete"
        for kind in ("AWS::S3::Bucket", "AWS::KMS::Key"):
            policies = {r["DeletionPolicy"] for r in template.find_resources(kind).values()}
            assert policies == {kept}, (name, kind)
        (cluster,) = template.find_resources("AWS::RDS::DBCluster").values()
        assert cluster["DeletionPolicy"] == ("Delete" if stage.destroys_data else "Snapshot")
    # Dev's buckets are emptied when it is destroyed (or the deletion would fail); prod's
    # are never touched.
    templates["dev"].resource_count_is("Custom::S3AutoDeleteObjects", 3)
    templates["prod"].resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_alarms_reach_the_subscribers_the_deployment_names(
    templates: dict[str, Template],
) -> None:
    prod = templates["prod"]
    prod.resource_count_is("AWS::SNS::Subscription", 2)
    topic = Match.object_like({"Ref": Match.string_like_regexp("^MonitoringAlarms")})
    prod.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "email", "Endpoint": "ops@example.com", "TopicArn": topic},
    )
    prod.has_resource_properties(
        "AWS::SNS::Subscription",
        {"Protocol": "https", "Endpoint": "https://hooks.example.com/g", "TopicArn": topic},
    )
    templates["dev"].resource_count_is("AWS::SNS::Subscription", 0)


def test_database_engine_is_pinned_to_a_version_cfn_lint_does_not_call_deprecated(
    templates: dict[str, Template],
) -> None:
    from importlib.resources import files

    # The list W3690 reads (cfnlint.rules.resources.rds.DbClusterEngineVersionDeprecated).
    schema = files("cfnlint.data.schemas.extensions.aws_rds_dbcluster")
    rules = json.loads((schema / "engine_version_deprecated.json").read_text())["allOf"]
    deprecated = {
        rule["if"]["properties"]["Engine"]["const"]: set(
            map(str, rule["if"]["properties"]["EngineVersion"]["enum"])
        )
        for rule in rules
    }
    assert "16.4" in deprecated["aurora-postgresql"], "the list is where this test reads it"
    for template in templates.values():
        (cluster,) = template.find_resources("AWS::RDS::DBCluster").values()
        props = cluster["Properties"]
        assert props["Engine"] == "aurora-postgresql"
        assert re.fullmatch(r"[0-9]+\.[0-9]+", props["EngineVersion"]), "pinned to a minor"
        assert props["EngineVersion"] not in deprecated[props["Engine"]]


def test_the_database_is_watched_in_every_stage(templates: dict[str, Template]) -> None:
    for template in templates.values():
        template.has_resource_properties(
            "AWS::RDS::DBCluster",
            {"PerformanceInsightsEnabled": True, "PerformanceInsightsKmsKeyId": Match.any_value()},
        )
        instances = template.find_resources("AWS::RDS::DBInstance").values()
        for instance in instances:  # Enhanced Monitoring: each instance's OS, every minute
            assert instance["Properties"]["MonitoringInterval"] == 60
            assert instance["Properties"]["MonitoringRoleArn"]


def test_cdk_json_sets_the_feature_flags_a_new_app_of_our_aws_cdk_lib_gets() -> None:
    """What `cdk init` writes: aws-cdk-lib's recommended-feature-flags.json, read from the
    installed package (its JavaScript, bundled in the jsii assembly)."""
    import tarfile

    import aws_cdk

    (bundle,) = (Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(bundle) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        recommended = json.load(member)
    assert len(recommended) > 50
    assert cdk_json_context() == recommended


# -- unclaimed uploads --------------------------------------------------------------------


def test_unclaimed_uploads_expire_per_stage_never_before_raw_ones(
    templates: dict[str, Template],
) -> None:
    from infra.stages import RAW_EXPIRY_DAYS, STAGES, Stage

    for name, template in templates.items():
        template.has_resource_properties(
            "AWS::S3::Bucket",
            {
                "LifecycleConfiguration": {
                    "Rules": Match.array_with(
                        [
                            Match.object_like(
                                {"Prefix": "raw/", "ExpirationInDays": RAW_EXPIRY_DAYS}
                            ),
                            Match.object_like(
                                {
                                    "Prefix": "unclaimed/",
                                    "ExpirationInDays": STAGES[name].unclaimed_expiry_days,
                                    "Status": "Enabled",
                                }
                            ),
                        ]
                    )
                }
            },
        )
    from dataclasses import replace

    from infra.stages import DeploymentRefused

    with pytest.raises(DeploymentRefused, match="before raw uploads"):
        replace(STAGES["dev"], unclaimed_expiry_days=RAW_EXPIRY_DAYS - 1)
    with pytest.raises(DeploymentRefused, match="quality_margin 5 is not a share"):
        replace(STAGES["dev"], quality_margin=5)  # a percentage where a share is meant
    with pytest.raises(DeploymentRefused, match="every minute or less often"):
        replace(STAGES["dev"], monitor_every_minutes=0)
    assert isinstance(STAGES["prod"], Stage)


def test_an_unclaimed_upload_alarms_the_topic(templates: dict[str, Template]) -> None:
    from gallop.layout import UNCLAIMED_PREFIX

    assert UNCLAIMED_PREFIX == "unclaimed/"
    for template in templates.values():
        template.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "Namespace": "gallop",
                "MetricName": "UnclaimedUploads",
                "Dimensions": [{"Name": "service", "Value": "gallop-ingest"}],
                "Statistic": "Sum",
                "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "AlarmActions": [
                    Match.object_like({"Ref": Match.string_like_regexp("^Monitoring")})
                ],
            },
        )


# -- checks nobody here wrote -------------------------------------------------------------


def construct_paths(stack: Any) -> dict[str, str]:
    """Logical id -> construct path under the stack (what accepted findings name)."""
    from aws_cdk import CfnElement

    return {
        stack.resolve(node.logical_id): node.node.path.removeprefix(f"{stack.node.path}/")
        for node in stack.node.find_all()
        if isinstance(node, CfnElement)
    }


def judged(
    found: dict[str, set[tuple[str, str]]], accepted: list[Any]
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(findings no entry accepts, as (stage, rule, path); entries' patterns that match no
    finding in any stage, as (rule, pattern))."""
    from fnmatch import fnmatchcase

    unaccepted = [
        (stage, rule, path)
        for stage, findings in found.items()
        for rule, path in sorted(findings)
        if not any(a.rule == rule and any(fnmatchcase(path, p) for p in a.paths) for a in accepted)
    ]
    stale = [
        (entry.rule, pattern)
        for entry in accepted
        for pattern in entry.paths
        if not any(
            rule == entry.rule and fnmatchcase(path, pattern)
            for findings in found.values()
            for rule, path in findings
        )
    ]
    return unaccepted, stale


def test_accepted_findings_each_carry_a_reason() -> None:
    from infra.accepted_findings import CFN_LINT, CHECKOV

    for entry in [*CFN_LINT, *CHECKOV]:
        assert entry.paths and len(entry.reason) >= 60, entry


def test_cfn_lint_finds_no_error_and_only_accepted_warnings(
    stacks: dict[str, Any], templates: dict[str, Template]
) -> None:
    from cfnlint.api import lint

    from infra.accepted_findings import CFN_LINT

    found = {}
    for stage, template in templates.items():
        matches = lint(json.dumps(template.to_json()), regions=[TEST_REGION])
        errors = [m for m in matches if m.rule.id.startswith("E")]
        assert errors == [], [str(m) for m in errors]
        paths = construct_paths(stacks[stage])
        found[stage] = {
            (m.rule.id, paths.get(m.path[1], m.path[1]) if m.path[0] == "Resources" else "")
            for m in matches
        }
    unaccepted, stale = judged(found, CFN_LINT)
    assert unaccepted == [], "fix them, or list them with a reason in infra/accepted_findings.py"
    assert stale == [], "no longer found: remove them from infra/accepted_findings.py"


def test_checkov_finds_only_accepted_findings(
    stacks: dict[str, Any], templates: dict[str, Template], tmp_path: Path
) -> None:
    from infra.accepted_findings import CHECKOV

    assert CHECKOV_BIN.exists(), f"{CHECKOV_BIN} is missing: `make {CHECKOV_TARGET}` installs it"
    found = {}
    for stage, template in templates.items():
        path = tmp_path / f"{stage}.template.json"
        path.write_text(json.dumps(template.to_json()))
        # Only the CloudFormation framework, offline: a few seconds a template.
        ran = subprocess.run(
            [str(CHECKOV_BIN), "--file", str(path), "--framework", "cloudformation"]
            + ["--output", "json", "--quiet", "--compact", "--skip-download"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode in (0, 1), ran.stderr  # 1: some check failed
        report = json.loads(ran.stdout)
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 100
        paths = construct_paths(stacks[stage])
        found[stage] = {
            (check["check_id"], paths[check["resource"].split(".", 1)[1]])
            for check in report["results"].get("failed_checks", [])
        }
    unaccepted, stale = judged(found, CHECKOV)
    assert unaccepted == [], "fix them, or list them with a reason in infra/accepted_findings.py"
    assert stale == [], "no longer found: remove them from infra/accepted_findings.py"


# -- watching the champion (#13): capture, the monitor, the alarms ---------------------------


def the_capture_stream(template: Template) -> tuple[str, dict]:
    ((stream_id, stream),) = resources(template, "AWS::KinesisFirehose::DeliveryStream").items()
    return stream_id, stream["Properties"]


def data_bucket_and_key(template: Template) -> tuple[str, str]:
    """The data bucket's logical id, and its KMS key as rendered."""
    (bucket_id,) = [i for i, name in bucket_names(template).items() if name == "data"]
    bucket = resources(template, "AWS::S3::Bucket")[bucket_id]["Properties"]
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    return bucket_id, rendered(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"])


def test_capture_is_a_firehose_stream_partitioned_into_the_data_bucket_as_the_layout_says(
    templates: dict[str, Template],
) -> None:
    from gallop.layout import (
        CAPTURE_ERROR_PREFIX,
        CAPTURE_PARTITION_QUERY,
        CAPTURE_PREFIX,
        capture_prefix,
    )

    # The partition keys the prefix names are the ones the query extracts.
    assert CAPTURE_PARTITION_QUERY == "{dataset: .dataset, model: .model_id}"
    assert capture_prefix("races", "m1", "2026-12-06") == "capture/races/m1/date=2026-12-06/"
    for template in templates.values():
        bucket_id, key = data_bucket_and_key(template)
        template.has_resource_properties(
            "AWS::KinesisFirehose::DeliveryStream",
            {
                "DeliveryStreamType": "DirectPut",
                "ExtendedS3DestinationConfiguration": Match.object_like(
                    {
                        "BucketARN": {"Fn::GetAtt": [bucket_id, "Arn"]},
                        "Prefix": CAPTURE_PREFIX,
                        "ErrorOutputPrefix": CAPTURE_ERROR_PREFIX,
                        "DynamicPartitioningConfiguration": Match.object_like({"Enabled": True}),
                        "ProcessingConfiguration": {
                            "Enabled": True,
                            "Processors": [
                                {
                                    "Type": "MetadataExtraction",
                                    "Parameters": Match.array_with(
                                        [
                                            {
                                                "ParameterName": "MetadataExtractionQuery",
                                                "ParameterValue": CAPTURE_PARTITION_QUERY,
                                            },
                                            {
                                                "ParameterName": "JsonParsingEngine",
                                                "ParameterValue": "JQ-1.6",
                                            },
                                        ]
                                    ),
                                }
                            ],
                        },
                        # JSON Lines as the reader reads them, and as moto delivers locally
                        "CompressionFormat": "UNCOMPRESSED",
                        "CloudWatchLoggingOptions": Match.object_like({"Enabled": True}),
                    }
                ),
            },
        )
        _, stream = the_capture_stream(template)
        destination = stream["ExtendedS3DestinationConfiguration"]
        # Dynamic partitioning refuses buffers under 64 MiB.
        assert destination["BufferingHints"]["SizeInMBs"] >= 64
        assert 0 < destination["BufferingHints"]["IntervalInSeconds"] <= 900
        # Encrypted in the stream and in the bucket, with the bucket's own key.
        sse = stream["DeliveryStreamEncryptionConfigurationInput"]
        assert sse["KeyType"] == "CUSTOMER_MANAGED_CMK" and rendered(sse["KeyARN"]) == key
        kms = destination["EncryptionConfiguration"]["KMSEncryptionConfig"]["AWSKMSKeyARN"]
        assert rendered(kms) == key
        # Delivery errors are logged to a group of the stack (with the stage's retention).
        logging = destination["CloudWatchLoggingOptions"]
        assert logging["LogGroupName"]["Ref"] in resources(template, "AWS::Logs::LogGroup")


def test_the_capture_streams_role_may_deliver_to_capture_and_nothing_else(
    template: Template,
) -> None:
    _, stream = the_capture_stream(template)
    role_id = stream["ExtendedS3DestinationConfiguration"]["RoleARN"]["Fn::GetAtt"][0]
    assert role_names(template)[role_id] == "capture stream"
    role = resources(template, "AWS::IAM::Role")[role_id]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "firehose.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": TEST_ACCOUNT}}
    assert "ManagedPolicyArns" not in role
    statements = role_statements(template)["capture stream"]
    by_action = {a: s for s in statements for a in listed(s["Action"])}
    assert set(by_action) == {
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:GetBucketLocation",
        "s3:ListBucketMultipartUploads",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "logs:PutLogEvents",
    }
    # (objects: the previous test's grants; the key only through S3; its own log stream)
    bucket_id, key = data_bucket_and_key(template)
    assert rendered(by_action["s3:GetBucketLocation"]["Resource"]) == f"<{bucket_id}.Arn>"
    assert rendered(by_action["kms:Decrypt"]["Resource"]) == key
    via = by_action["kms:Decrypt"]["Condition"]["StringEquals"]["kms:ViaService"]
    assert rendered(via) == f"s3.{TEST_REGION}.<AWS::URLSuffix>"
    (group_id,) = [
        i for i, g in resources(template, "AWS::Logs::LogGroup").items() if i.startswith("Capture")
    ]
    assert f":log-group:<{group_id}>:log-stream:" in rendered(
        by_action["logs:PutLogEvents"]["Resource"]
    )


def test_the_predict_function_may_only_put_record_batches_to_the_capture_stream(
    template: Template,
) -> None:
    stream_id, _ = the_capture_stream(template)
    statements = role_statements(template)["predict"]
    (put,) = [s for s in statements if any(a.startswith("firehose:") for a in listed(s["Action"]))]
    assert listed(put["Action"]) == ["firehose:PutRecordBatch"]
    assert put["Resource"] == {"Fn::GetAtt": [stream_id, "Arn"]}
    # No other function may write to it; the predict function is told its name.
    writers = {
        name
        for name, role in role_statements(template).items()
        if any(a.startswith("firehose:") for s in role for a in listed(s["Action"]))
    }
    assert writers == {"predict"}
    variables = gallop_functions(template)["predict"]["Environment"]["Variables"]
    assert variables["GALLOP_CAPTURE_STREAM"] == {"Ref": stream_id}


def test_the_monitor_runs_on_its_stages_schedule_a_few_at_a_time_and_keeps_failures(
    templates: dict[str, Template],
) -> None:
    from infra.stages import STAGES

    for name, template in templates.items():
        monitor = function_ids(template)["monitor"]
        props = gallop_functions(template)["monitor"]
        assert props["ImageConfig"]["Command"] == ["monitor.handler.handler"]
        assert props["VpcConfig"]["SubnetIds"], "it reaches the database"
        assert props["ReservedConcurrentExecutions"] == 3
        minutes = STAGES[name].monitor_every_minutes
        every = "rate(1 hour)" if minutes == 60 else f"rate({minutes} minutes)"
        template.has_resource_properties(
            "AWS::Events::Rule",
            {
                "ScheduleExpression": every,
                "State": "ENABLED",
                "Targets": [
                    Match.object_like(
                        {
                            "Arn": {"Fn::GetAtt": [monitor, "Arn"]},
                            "RetryPolicy": Match.object_like(
                                {"MaximumRetryAttempts": Match.any_value()}
                            ),
                            "DeadLetterConfig": {"Arn": Match.any_value()},
                        }
                    )
                ],
            },
        )
        # EventBridge may invoke it, and only from that rule.
        ((rule_id, _),) = [
            (i, r)
            for i, r in resources(template, "AWS::Events::Rule").items()
            if "ScheduleExpression" in r["Properties"]
        ]
        template.has_resource_properties(
            "AWS::Lambda::Permission",
            {
                "FunctionName": {"Fn::GetAtt": [monitor, "Arn"]},
                "Principal": "events.amazonaws.com",
                "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]},
            },
        )
        # A run that fails (after a retry) goes to a queue, which is alarmed on.
        (invoke,) = resources(template, "AWS::Lambda::EventInvokeConfig").values()
        assert invoke["Properties"]["FunctionName"] == {"Ref": monitor}
        assert invoke["Properties"]["MaximumRetryAttempts"] == 1
        failed = invoke["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        queue = failed["Fn::GetAtt"][0]
        template.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [
                    {"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}
                ],
            },
        )


def topic_ref() -> Any:
    return Match.object_like({"Ref": Match.string_like_regexp("^MonitoringAlarms")})


def has_alarm(
    template: Template, props: dict[str, Any], at: float, comparison: str = "GreaterThanOrEqualTo"
) -> None:
    """An alarm on that metric, at that threshold, that notifies the topic."""
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            **props,
            "Threshold": at,
            "ComparisonOperator": f"{comparison}Threshold",
            "AlarmActions": [topic_ref()],
        },
    )


def test_every_new_alarm_exists_and_notifies_the_topic(templates: dict[str, Template]) -> None:
    from infra.stages import STAGES

    for name, template in templates.items():
        stage = STAGES[name]

        def ours(metric: str, service: str, statistic: str) -> dict[str, Any]:
            return {
                "Namespace": "gallop",
                "MetricName": metric,
                "Dimensions": [{"Name": "service", "Value": service}],
                "Statistic": statistic,
            }

        has_alarm(template, ours("DriftedFeatures", "gallop-monitor", "Maximum"), 1)
        has_alarm(
            template, ours("LiveQualityDrop", "gallop-monitor", "Maximum"), stage.quality_margin
        )
        # ... the margin the API and the monitoring page judge live quality by, too.
        functions = gallop_functions(template)
        for judge in ("api", "monitor"):
            margin = functions[judge]["Environment"]["Variables"]["GALLOP_QUALITY_MARGIN"]
            assert float(margin) == stage.quality_margin
        has_alarm(template, ours("CaptureFailures", "gallop-predict", "Sum"), 1)
        has_alarm(template, ours("CaptureDropped", "gallop-predict", "Sum"), 1)
        # Past the stream: records that cannot reach S3 age in it.
        stream_id, _ = the_capture_stream(template)
        has_alarm(
            template,
            {
                "Namespace": "AWS/Firehose",
                "MetricName": "DeliveryToS3.DataFreshness",
                "Dimensions": [{"Name": "DeliveryStreamName", "Value": {"Ref": stream_id}}],
                "Statistic": "Maximum",
            },
            900,
        )
        # Both work queues' backlogs (not their dead-letter queues: those alarm on depth).
        aged = {
            a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
            for a in resources(template, "AWS::CloudWatch::Alarm").values()
            if a["Properties"].get("MetricName") == "ApproximateAgeOfOldestMessage"
        }
        work = {
            i
            for i, q in resources(template, "AWS::SQS::Queue").items()
            if "RedrivePolicy" in q["Properties"]
        }
        assert aged == work
        has_alarm(
            template,
            {"Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage"},
            stage.queue_age_alarm_minutes * 60,
        )
        # The database: CPU, and memory running out; its proxy.
        (cluster_id,) = resources(template, "AWS::RDS::DBCluster")
        cluster = [{"Name": "DBClusterIdentifier", "Value": {"Ref": cluster_id}}]
        has_alarm(
            template,
            {"Namespace": "AWS/RDS", "MetricName": "CPUUtilization", "Dimensions": cluster},
            80,
        )
        has_alarm(
            template,
            {"Namespace": "AWS/RDS", "MetricName": "FreeableMemory", "Dimensions": cluster},
            0.1 * stage.database_max_acu * 2 * 1024**3,
            comparison="LessThan",
        )
        (proxy_id,) = resources(template, "AWS::RDS::DBProxy")
        proxy = [{"Name": "ProxyName", "Value": {"Ref": proxy_id}}]
        for metric in ("DatabaseConnectionsSetupFailed", "ClientConnectionsSetupFailedAuth"):
            has_alarm(
                template, {"Namespace": "AWS/RDS", "MetricName": metric, "Dimensions": proxy}, 1
            )
        for each in resources(template, "AWS::CloudWatch::Alarm").values():
            assert each["Properties"]["AlarmActions"], "every alarm notifies the topic"


def test_a_failed_secret_rotation_reaches_the_topic_from_that_rule_only(
    templates: dict[str, Template],
) -> None:
    for template in templates.values():
        (attachment,) = resources(template, "AWS::SecretsManager::SecretTargetAttachment")
        (secret,) = resources(template, "AWS::SecretsManager::Secret")
        rules = {
            i: r["Properties"]
            for i, r in resources(template, "AWS::Events::Rule").items()
            if "EventPattern" in r["Properties"]
        }
        ((rule_id, rule),) = rules.items()
        pattern = rule["EventPattern"]
        assert pattern["source"] == ["aws.secretsmanager"]
        assert pattern["detail-type"] == ["AWS Service Event via CloudTrail"]
        assert "RotationFailed" in pattern["detail"]["eventName"]
        # the database's secret (its attachment's Ref is the secret's ARN)
        (secret_arn,) = pattern["detail"]["additionalEventData"]["SecretId"]
        assert secret_arn["Ref"] in (attachment, secret)
        (target,) = rule["Targets"]
        assert rendered(target["Arn"]).startswith("<MonitoringAlarms")
        assert "DeadLetterConfig" in target
        # The topic lets EventBridge publish for this rule, and the key serves it.
        this_rule = {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}}
        template.has_resource_properties(
            "AWS::SNS::TopicPolicy",
            {
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Allow",
                                    "Principal": {"Service": "events.amazonaws.com"},
                                    "Action": "sns:Publish",
                                    "Condition": this_rule,
                                }
                            )
                        ]
                    )
                }
            },
        )
        (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Allow":
                assert "Condition" in statement, "each publisher is held to its source"
        key_users = [
            s
            for k in resources(template, "AWS::KMS::Key").values()
            for s in k["Properties"]["KeyPolicy"]["Statement"]
            if s.get("Principal") == {"Service": "events.amazonaws.com"}
        ]
        assert key_users and all("aws:SourceArn" in s["Condition"]["ArnLike"] for s in key_users)


def test_ingest_tells_the_monitor_of_new_versions_and_the_api_may_run_it_now(
    template: Template,
) -> None:
    functions = gallop_functions(template)
    monitor = function_ids(template)["monitor"]
    # GIVEN the monitor's queue, which the monitor consumes
    (mapping,) = [
        m
        for m in resources(template, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": monitor}
    ]
    queue_id = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
    # THEN ingest is told its URL and may send to it, and only ingest may
    ingest = functions["ingest"]["Environment"]["Variables"]
    assert ingest["GALLOP_MONITOR_QUEUE_URL"] == {"Ref": queue_id}
    senders = {
        name
        for name, role in role_statements(template).items()
        for statement in role
        if "sqs:SendMessage" in listed(statement["Action"])
        and f"<{queue_id}.Arn>" in map(rendered, listed(statement["Resource"]))
    }
    assert senders == {"ingest"}
    # AND the API knows the monitor function and may invoke it (POST /v1/monitoring/checks)
    api = functions["api"]["Environment"]["Variables"]
    assert api["GALLOP_MONITOR_FUNCTION_NAME"] == {"Ref": monitor}
    invokers = {
        name
        for name, role in role_statements(template).items()
        for statement in role
        if "lambda:InvokeFunction" in listed(statement["Action"])
        and f"<{monitor}.Arn>" in map(rendered, listed(statement["Resource"]))
    }
    assert invokers == {"api", "renewal machine"}  # (an approval request's wait and expiry)


# -- renewing the champion (#14): the renewal state machine, retraining, keys with roles --


def test_the_renewal_machine_waits_on_a_task_token_then_approves_rejects_or_expires(
    templates: dict[str, Template],
) -> None:
    for stage, template in templates.items():
        hours = STAGE_CONTEXT[stage].get("approval_timeout_hours", 72)
        monitor = f"<{function_ids(template)['monitor']}.Arn>"
        machine = definition(template, renewal=True)
        states = machine["States"]
        # GIVEN an execution started on {"approval_id"}: the monitor function is invoked with
        # a task token it stores on the request, and the execution waits for it
        wait = states[machine["StartAt"]]
        assert wait["Resource"] == "arn:<AWS::Partition>:states:::lambda:invoke.waitForTaskToken"
        assert wait["Parameters"] == {
            "FunctionName": monitor,
            "Payload": {
                "renewal": "await",
                "approval_id.$": "$.approval_id",
                "task_token.$": "$$.Task.Token",
            },
        }
        # ... for as long as the request lives (its expires_at is set from the same hours)
        assert wait["TimeoutSeconds"] == hours * 3600
        assert machine["TimeoutSeconds"] > wait["TimeoutSeconds"], "a backstop only"
        # WHEN approved (SendTaskSuccess) THEN it succeeds
        assert states[wait["Next"]] == {"Type": "Succeed"}
        catches = {error: c for c in wait["Catch"] for error in c["ErrorEquals"]}
        assert set(catches) == {"States.Timeout", "REJECTED", "EXPIRED"}
        assert {c["ResultPath"] for c in catches.values()} == {"$.error"}, "approval_id stays"
        # WHEN rejected (SendTaskFailure, error REJECTED) THEN it fails so, saying why
        assert states[catches["REJECTED"]["Next"]] == {
            "Type": "Fail",
            "Error": "REJECTED",
            "CausePath": "$.error.Cause",
        }
        expired = {"Type": "Fail", "Error": "EXPIRED", "CausePath": "$.error.Cause"}
        # WHEN expired first by a read or a monitor run THEN it fails as expired
        assert states[catches["EXPIRED"]["Next"]] == expired
        # WHEN nobody decides in time THEN the monitor expires the request, then it fails
        expire = states[catches["States.Timeout"]["Next"]]
        assert expire["Resource"] == monitor
        assert expire["Parameters"] == {"renewal": "expire", "approval_id.$": "$.approval_id"}
        assert any(r["ErrorEquals"] == ["States.ALL"] for r in expire["Retry"])
        assert states[expire["Next"]] == expired
        assert set(states) == {"AwaitDecision", "Approved", "Rejected", "Expire", "Expired"}


def test_the_renewal_machine_is_named_as_the_monitor_is_told_and_logs_and_traces(
    templates: dict[str, Template],
) -> None:
    for stage, template in templates.items():
        _, machine = the_state_machine(template, renewal=True)
        name = f"Gallop-{stage}-renewal"
        assert machine["StateMachineName"] == name
        assert machine["StateMachineType"] == "STANDARD"
        assert machine["TracingConfiguration"] == {"Enabled": True}
        logging = machine["LoggingConfiguration"]
        # every event, without its data: a waiting task's parameters hold its token
        assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is False
        (destination,) = logging["Destinations"]
        group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
        group = resources(template, "AWS::Logs::LogGroup")[group_id]["Properties"]
        assert group["LogGroupName"] == f"/aws/vendedlogs/states/{name}"
        env = gallop_functions(template)["monitor"]["Environment"]["Variables"]
        arn = f"arn:aws:states:{TEST_REGION}:{TEST_ACCOUNT}:stateMachine:{name}"
        assert env["GALLOP_RENEWAL_STATE_MACHINE_ARN"] == arn
        hours = STAGE_CONTEXT[stage].get("approval_timeout_hours", 72)
        assert float(env["GALLOP_APPROVAL_TIMEOUT_HOURS"]) == hours


def test_only_the_monitor_starts_renewals_and_the_api_and_monitor_answer_them(
    template: Template,
) -> None:
    renewal = f"arn:aws:states:{TEST_REGION}:{TEST_ACCOUNT}:stateMachine:Gallop-prod-renewal"
    training, _ = the_state_machine(template)
    starters: dict[str, set[str]] = {}
    answerers = set()
    for name, statements in role_statements(template).items():
        for statement in statements:
            actions = listed(statement["Action"])
            if "states:StartExecution" in actions:
                starters.setdefault(name, set()).update(
                    map(rendered, listed(statement["Resource"]))
                )
            if {"states:SendTaskSuccess", "states:SendTaskFailure"} & set(actions):
                assert set(actions) >= {"states:SendTaskSuccess", "states:SendTaskFailure"}
                assert not any(a.startswith("states:Start") for a in actions)
                answerers.add(name)
    # the monitor opens requests and retrains (a run, as the API starts one)
    assert starters == {"api": {f"<{training}>"}, "monitor": {renewal, f"<{training}>"}}
    assert answerers == {"api", "monitor"}  # a decision; an expiry
    # The renewal machine may invoke the monitor function and nothing else.
    monitor = function_ids(template)["monitor"]
    statements = role_statements(template)["renewal machine"]
    invoked = {
        rendered(r)
        for s in statements
        if "lambda:InvokeFunction" in listed(s["Action"])
        for r in listed(s["Resource"])
    }
    assert invoked == {f"<{monitor}.Arn>", f"<{monitor}.Arn>:*"}
    actions = {a for s in statements for a in listed(s["Action"])}
    assert {a.split(":")[0] for a in actions} == {"lambda", "logs", "xray"}


def test_the_monitor_retrains_as_the_api_trains_and_announces_on_the_alarm_topic(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = gallop_functions(template)["monitor"]["Environment"]["Variables"]
    api = gallop_functions(template)["api"]["Environment"]["Variables"]
    for variable in [k for k in os.environ if k.startswith("GALLOP_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(variable)
    for key, value in env.items():
        monkeypatch.setenv(key, rendered(value))
    settings = Settings().require_for("monitor")
    # The same launcher, state machine, image, role and code version as the API's.
    launch = [k for k in api if k.startswith(("GALLOP_TRAINING_", "GALLOP_SAGEMAKER_"))]
    assert len(launch) >= 4 and settings.training_launcher == "stepfunctions"
    for key in [*launch, "GALLOP_CODE_VERSION"]:
        assert env[key] == api[key], key
    # Announcements: on the alarm topic, which it may publish to (and use its key for).
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    assert settings.alarm_topic_arn == f"<{topic_id}>"
    statements = role_statements(template)["monitor"]
    (publish,) = [s for s in statements if "sns:Publish" in listed(s["Action"])]
    assert publish["Resource"] == {"Ref": topic_id}
    publishers = {
        name
        for name, role in role_statements(template).items()
        for s in role
        if "sns:Publish" in listed(s["Action"])
    }
    assert publishers == {"monitor"}


def test_every_api_key_carries_its_roles_and_is_in_the_usage_plan(
    templates: dict[str, Template],
) -> None:
    for stage, template in templates.items():
        keys = resources(template, "AWS::ApiGateway::ApiKey")
        roles = {
            key["Properties"].get("Name"): {t["Key"]: t["Value"] for t in key["Properties"]["Tags"]}
            for key in keys.values()
        }
        # The first key (CloudFormation names it) can do everything; the context's keys
        # are named as declared, with their roles.
        expected = {None: {"gallop:roles": "reader+writer+approver"}}
        for key in STAGE_CONTEXT[stage].get("api_keys", []):
            expected[key["name"]] = {"gallop:roles": key["roles"]}
        assert roles == expected
        plan_keys = {
            k["Properties"]["KeyId"]["Ref"]
            for k in resources(template, "AWS::ApiGateway::UsagePlanKey").values()
        }
        assert plan_keys == set(keys), "every key is throttled and capped by the usage plan"


def test_the_api_and_predict_functions_may_read_api_keys_and_nothing_else_of_the_gateway(
    template: Template,
) -> None:
    readers = {}
    for name, statements in role_statements(template).items():
        for statement in statements:
            actions = listed(statement["Action"])
            if any(a.startswith("apigateway:") for a in actions):
                assert actions == ["apigateway:GET"], statement
                readers[name] = listed(statement["Resource"])
    keys = f"arn:aws:apigateway:{TEST_REGION}::/apikeys/*"
    assert readers == {"api": [keys], "predict": [keys]}
