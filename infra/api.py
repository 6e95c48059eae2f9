"""The HTTPS API: a REST API (API keys and usage plans give per-client keys, throttling
and quotas; request validation; access logs) in front of two functions: predict answers
POST /v1/predict and /v1/explain (onnxruntime and numpy, no database, outside the VPC);
the api function everything else."""

from __future__ import annotations

from aws_cdk import Duration, Stack, Tags
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as waf
from constructs import Construct

from gallop.api.problems import MEDIA_TYPE, TYPE_BASE, code_of
from gallop.settings import ROLES_TAG
from infra.functions import Placement, Wiring, zip_function
from infra.stages import FIRST_KEY_ROLES, KeySpec

RATE_LIMIT = 50  # requests per second per client key, steady
BURST_LIMIT = 100
# The predict function's routes (gallop.api.serving's router), under the app's /v1.
PREDICT_PATHS = ("predict", "explain")
# The API's description and its docs (FastAPI's own routes) answer without a key, on
# purpose: they hold routes and schemas, no data, and a client generator or a browser
# opening /docs cannot send a header first (README).
PUBLIC_PATHS = ("openapi.json", "docs", "redoc")
# API Gateway's own errors, answered before the app is reached, as the app answers its
# own: problem+json (gallop.api.problems). Response type -> the status it answers with.
# A missing or wrong key is 401, as the app says it (the gateway's default is 403).
GATEWAY_ERRORS = {
    apigw.ResponseType.API_CONFIGURATION_ERROR: 500,
    apigw.ResponseType.INVALID_API_KEY: 401,
    apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN: 404,  # no route: a path or method
    apigw.ResponseType.ACCESS_DENIED: 403,
    apigw.ResponseType.WAF_FILTERED: 403,
    apigw.ResponseType.THROTTLED: 429,
    apigw.ResponseType.QUOTA_EXCEEDED: 429,
    apigw.ResponseType.REQUEST_TOO_LARGE: 413,
    apigw.ResponseType.BAD_REQUEST_PARAMETERS: 400,
    apigw.ResponseType.BAD_REQUEST_BODY: 400,
    apigw.ResponseType.UNSUPPORTED_MEDIA_TYPE: 415,
    apigw.ResponseType.INTEGRATION_FAILURE: 502,
    apigw.ResponseType.INTEGRATION_TIMEOUT: 504,
    apigw.ResponseType.DEFAULT_4_XX: 400,
    apigw.ResponseType.DEFAULT_5_XX: 500,
}
RETRY_AFTER_SECONDS = 1  # a throttled client: the token bucket refills every second


def gateway_problem(status: int) -> str:
    """The mapping template of a gateway error: the message is API Gateway's own."""
    code, title = code_of(status)
    return (
        f'{{"type": "{TYPE_BASE}{code}", "title": "{title}", "status": {status}, '
        f'"detail": $context.error.messageString, "code": "{code}", '
        '"request_id": "$context.requestId"}'
    )


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        layers: list[lambda_.ILayerVersion],
        predict_layers: list[lambda_.ILayerVersion],
        wiring: Wiring,
        placement: Placement,
        stage_name: str,
        api_concurrency: int,
        predict_concurrency: int,
        keys: tuple[KeySpec, ...] = (),
    ) -> None:
        super().__init__(scope, id)
        self.function = zip_function(
            self,
            "Function",
            function="api",
            layers=layers,
            wiring=wiring,
            placement=placement,
            memory_mb=1024,
            timeout=Duration.seconds(29),
            description="gallop HTTP API (FastAPI through Mangum)",
            reserved_concurrency=api_concurrency,
        )
        self.predict = zip_function(
            self,
            "PredictFunction",
            function="predict",
            layers=predict_layers,
            wiring=wiring,
            # Only S3 (the models, their aliases, entity snapshots): no database, so no
            # VPC, no network interface to attach at cold start and no NAT in the path.
            placement=None,
            # Lambda gives CPU in proportion to memory (a whole vCPU at 1,769 MB): a
            # request is CPU-bound (JSON, numpy validation, onnxruntime), and so is a cold
            # start's import of onnxruntime and loading a model's session. 1024 MB is the
            # start, to be tuned on measured latency.
            memory_mb=1024,
            # A warm request takes milliseconds; a cold one loads a model from S3.
            timeout=Duration.seconds(10),
            description="gallop predictions and explanations (onnxruntime, no database)",
            reserved_concurrency=predict_concurrency,
        )
        access_logs = logs.LogGroup(self, "AccessLogs")
        self.rest_api = apigw.LambdaRestApi(
            self,
            "RestApi",
            # API Gateway's metrics are keyed by name: a default name could be shared.
            rest_api_name=f"{Stack.of(self).stack_name}-api",
            handler=self.function,
            # Routes are added below: a proxying LambdaRestApi takes no other resource.
            proxy=False,
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            # Every method, the proxy and the root alike, needs a key (but PUBLIC_PATHS').
            default_method_options=apigw.MethodOptions(api_key_required=True),
            deploy_options=apigw.StageOptions(
                # Named for the deployment stage: the routes carry the version themselves,
                # so a URL reads {ApiUrl}v1/... (the app builds its links with this prefix).
                stage_name=stage_name,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                throttling_rate_limit=RATE_LIMIT * 10,
                throttling_burst_limit=BURST_LIMIT * 10,
            ),
        )
        self._routes()
        self.validator = self.rest_api.add_request_validator(
            "Validate", validate_request_body=True, validate_request_parameters=True
        )
        for method in self.rest_api.methods:
            method.node.default_child.add_property_override(  # type: ignore[union-attr]
                "RequestValidatorId", self.validator.request_validator_id
            )
        self.plan = self.rest_api.add_usage_plan(
            "PerClient",
            throttle=apigw.ThrottleSettings(rate_limit=RATE_LIMIT, burst_limit=BURST_LIMIT),
            quota=apigw.QuotaSettings(limit=1_000_000, period=apigw.Period.MONTH),
        )
        self.plan.add_api_stage(stage=self.rest_api.deployment_stage)
        # Every key says what it may do in its tag (the app reads it by the key's id); the
        # first can do everything. Its name, as CloudFormation makes it, stays: a name set
        # now would replace the key, and its secret with it.
        self.first_key = self._key("FirstClient", FIRST_KEY_ROLES)
        self.keys = [self.first_key]
        for spec in keys:
            self.keys.append(self._key(f"Key-{spec.name}", spec.roles, name=spec.name))
        self._firewall()
        self._gateway_errors()

    def _key(self, id: str, roles: str, name: str | None = None) -> apigw.IApiKey:
        key = self.rest_api.add_api_key(id, api_key_name=name)
        Tags.of(key).add(ROLES_TAG, roles)
        self.plan.add_api_key(key)
        return key

    def _gateway_errors(self) -> None:
        for kind, status in GATEWAY_ERRORS.items():
            headers = {"Content-Type": f"'{MEDIA_TYPE}'"}
            if status == 429:
                headers["Retry-After"] = f"'{RETRY_AFTER_SECONDS}'"
            if status == 401:
                headers["WWW-Authenticate"] = """'ApiKey header="x-api-key"'"""
            self.rest_api.add_gateway_response(
                f"Problem{kind.response_type}",
                type=kind,
                status_code=str(status),
                response_headers=headers,
                templates={"application/json": gateway_problem(status)},
            )

    def _routes(self) -> None:
        """ANY / and /{proxy+} to the api function, as a proxying API has them; POST
        /v1/predict and /v1/explain to the predict function. /v1/{proxy+} sends the rest
        of /v1 to the api function explicitly, not by a fallback past /v1."""
        root = self.rest_api.root
        root.add_proxy()  # (also ANY on / itself: the api function, the default)
        v1 = root.add_resource("v1")
        v1.add_proxy()
        predictions = apigw.LambdaIntegration(self.predict)
        for path in PREDICT_PATHS:
            v1.add_resource(path).add_method("POST", predictions)
        for path in PUBLIC_PATHS:
            root.add_resource(path).add_method("GET", api_key_required=False)

    def _firewall(self) -> None:
        """AWS managed rules in front of the API (common exploits, known bad inputs)."""
        rules = []
        for priority, name in enumerate(
            ["AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"]
        ):
            rules.append(
                waf.CfnWebACL.RuleProperty(
                    name=name,
                    priority=priority,
                    override_action=waf.CfnWebACL.OverrideActionProperty(none={}),
                    statement=waf.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=waf.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS",
                            name=name,
                            # Bodies over 8 KB are normal here (specs, race cards of up to
                            # 1,000 runners); the app limits sizes itself.
                            rule_action_overrides=[
                                waf.CfnWebACL.RuleActionOverrideProperty(
                                    name="SizeRestrictions_BODY",
                                    action_to_use=waf.CfnWebACL.RuleActionProperty(count={}),
                                )
                            ]
                            if name == "AWSManagedRulesCommonRuleSet"
                            else None,
                        )
                    ),
                    visibility_config=waf.CfnWebACL.VisibilityConfigProperty(
                        cloud_watch_metrics_enabled=True,
                        metric_name=name,
                        sampled_requests_enabled=True,
                    ),
                )
            )
        acl = waf.CfnWebACL(
            self,
            "Firewall",
            scope="REGIONAL",
            default_action=waf.CfnWebACL.DefaultActionProperty(allow={}),
            rules=rules,
            visibility_config=waf.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True,
                metric_name=f"{Stack.of(self).stack_name}-api",
                sampled_requests_enabled=True,
            ),
        )
        waf.CfnWebACLAssociation(
            self,
            "FirewallAssociation",
            web_acl_arn=acl.attr_arn,
            resource_arn=self.rest_api.deployment_stage.stage_arn,
        )
