"""The HTTPS API: a REST API (API keys and usage plans give per-client keys, throttling
and quotas; request validation; access logs) in front of two functions: predict answers
POST /v1/predict and /v1/explain (onnxruntime and numpy, no database, outside the VPC);
the api function everything else."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as waf
from constructs import Construct

from infra.functions import Placement, Wiring, zip_function

RATE_LIMIT = 50  # requests per second per client key, steady
BURST_LIMIT = 100
# The predict function's routes (gallop.api.serving's router), under the app's /v1.
PREDICT_PATHS = ("predict", "explain")


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
        )
        access_logs = logs.LogGroup(self, "AccessLogs", retention=logs.RetentionDays.ONE_YEAR)
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
            # Every method, the proxy and the root alike, needs a key.
            default_method_options=apigw.MethodOptions(api_key_required=True),
            deploy_options=apigw.StageOptions(
                stage_name="v1",
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
        self.first_key = self.rest_api.add_api_key("FirstClient")
        self.plan.add_api_key(self.first_key)
        self._firewall()

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
                metric_name="gallop-api",
                sampled_requests_enabled=True,
            ),
        )
        waf.CfnWebACLAssociation(
            self,
            "FirewallAssociation",
            web_acl_arn=acl.attr_arn,
            resource_arn=self.rest_api.deployment_stage.stage_arn,
        )
