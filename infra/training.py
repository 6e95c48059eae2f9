"""Training: POST /v1/training-runs -> a Step Functions execution -> SageMaker "base" jobs
in parallel -> the "stack" job -> the register function; any failure -> the same function
marks the run failed. Also the training image the jobs run and the role they assume."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from gallop.training.config import BASE_JOBS_AT_ONCE
from infra.functions import IMAGE_EXCLUDE, Placement, Wiring, dependencies_path, zip_function

# Every training job the state machine may start, describe, stop or tag, and whose role
# it may pass, is named so: gallop.training.sagemaker names jobs g-{run_id}-a{attempt}-...
# (SageMaker allows 63 characters; a test ties the two).
JOB_PREFIX = "g-"
# The boto3 create_training_job arguments a run's requests carry, forwarded one by one:
# the state machine passes on nothing else (no VpcConfig, no other role, no Environment).
REQUEST_FIELDS = (
    "TrainingJobName",
    "AlgorithmSpecification",
    "RoleArn",
    "HyperParameters",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "Tags",
)
# Where SageMaker writes each job's log streams (one group for every training job).
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


class Training(Construct):
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
        self.image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            # Built by `cdk deploy` from build/images/training; synthesis needs no Docker.
            directory=dependencies_path(self, "images", "training"),
            # The wheels inside are x86_64, as SageMaker's ml.* CPU instances are.
            platform=ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_EXCLUDE,
        )
        self.sagemaker_role = self._sagemaker_role()
        self.function = zip_function(
            self,
            "Function",
            function="training",
            layers=layers,
            wiring=wiring,
            placement=placement,
            memory_mb=512,
            timeout=Duration.minutes(5),
            description="Register a trained run's model, or record why the run failed",
        )
        self.state_machine = self._state_machine()

    # -- the jobs' role ------------------------------------------------------------------

    def _sagemaker_role(self) -> iam.Role:
        """What a training job does besides S3 (the stack grants its channels and output):
        pull the image, log, publish its metrics. Only SageMaker training jobs of this
        account named by gallop's launcher may assume it."""
        stack = Stack.of(self)
        role = iam.Role(
            self,
            "SageMakerRole",
            description="gallop SageMaker training jobs",
            assumed_by=iam.ServicePrincipal(
                "sagemaker.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {"aws:SourceArn": self.job_arn(JOB_PREFIX + "*")},
                },
            ),
        )
        self.image.repository.grant_pull(role)
        logs_arn = stack.format_arn(
            service="logs",
            resource="log-group",
            resource_name=TRAINING_LOG_GROUP,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # One stream per job and instance in SageMaker's group, which SageMaker
                # creates on the account's first training job.
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:DescribeLogStreams",
                    "logs:PutLogEvents",
                ],
                resources=[logs_arn, f"{logs_arn}:*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # No resource-level permissions exist for PutMetricData: the namespace
                # condition keeps it to SageMaker's training metrics.
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": TRAINING_LOG_GROUP}},
            )
        )
        return role

    def job_arn(self, name: str) -> str:
        return Stack.of(self).format_arn(
            service="sagemaker", resource="training-job", resource_name=name
        )

    # -- the state machine ---------------------------------------------------------------

    def _state_machine(self) -> sfn.StateMachine:
        """Map(base_jobs) -> stack job -> register; a failure of any -> failed -> Fail.
        Every step keeps its input (ResultPath), so run_id is there for the last one."""
        mark_failed = self._invoke(
            "MarkFailed",
            {
                "action": "failed",
                "run_id": sfn.JsonPath.string_at("$.run_id"),
                "error": sfn.JsonPath.object_at("$.error"),
            },
        )
        # Marking a run FAILED is idempotent: tried again through a database or proxy
        # hiccup of the function itself, so that no run is left RUNNING for good.
        mark_failed.add_retry(
            errors=[sfn.Errors.ALL],
            max_attempts=6,
            interval=Duration.seconds(5),
            backoff_rate=2.0,
        )
        failed = mark_failed.next(
            sfn.Fail(self, "Failed", error_path="$.error.Error", cause_path="$.error.Cause")
        )

        base_jobs = sfn.Map(
            self,
            "TrainBaseModels",
            items_path=sfn.JsonPath.string_at("$.base_jobs"),
            max_concurrency=BASE_JOBS_AT_ONCE,
            # The stack job finds their outputs by its channels; nothing to carry on.
            result_path=sfn.JsonPath.DISCARD,
        )
        base_jobs.item_processor(self._training_job("TrainBaseModel", request="$"))
        stack_job = self._training_job("TrainStack", request="$.stack_job", result_path="$.stack")
        register = self._invoke(
            "Register",
            {
                "action": "register",
                "run_id": sfn.JsonPath.string_at("$.run_id"),
                "model_artifacts": sfn.JsonPath.string_at(
                    "$.stack.ModelArtifacts.S3ModelArtifacts"
                ),
            },
            result_path="$.registered",
        )
        for step in (base_jobs, stack_job, register):
            step.add_catch(failed, errors=[sfn.Errors.ALL], result_path="$.error")

        log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            # Vended-logs names keep CloudWatch Logs' resource policy small.
            log_group_name=f"/aws/vendedlogs/states/{Stack.of(self).stack_name}-training",
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            "StateMachine",
            comment="gallop training run: base jobs, stack job, register",
            definition_body=sfn.DefinitionBody.from_chainable(
                base_jobs.next(stack_job).next(register)
            ),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(24),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
        )
        self._allow_training_jobs(machine)
        return machine

    def _training_job(
        self, id: str, *, request: str, result_path: str | None = None
    ) -> sfn.CustomState:
        """CreateTrainingJob and wait (.sync), forwarding every field of the request at
        `request` (a full boto3 create_training_job kwargs object the launcher built)."""
        state: dict[str, object] = {
            "Type": "Task",
            "Resource": f"arn:{Stack.of(self).partition}:states:::sagemaker:createTrainingJob.sync",
            "Parameters": {f"{field}.$": f"{request}.{field}" for field in REQUEST_FIELDS},
            # SageMaker refusing to start a job (the account's instance quota, throttling)
            # creates none, so the same name may be asked for again, after a wait.
            "Retry": [
                {
                    "ErrorEquals": ["SageMaker.AmazonSageMakerException"],
                    "IntervalSeconds": 30,
                    "MaxAttempts": 5,
                    "BackoffRate": 2,
                }
            ],
        }
        if result_path:
            # Only what comes next needs, beside the run's own input.
            state["ResultSelector"] = {
                "TrainingJobName.$": "$.TrainingJobName",
                "ModelArtifacts.$": "$.ModelArtifacts",
            }
            state["ResultPath"] = result_path
        return sfn.CustomState(self, id, state_json=state)

    def _invoke(
        self, id: str, payload: dict[str, object], result_path: str = sfn.JsonPath.DISCARD
    ) -> tasks.LambdaInvoke:
        return tasks.LambdaInvoke(
            self,
            id,
            lambda_function=self.function,
            payload=sfn.TaskInput.from_object(payload),
            payload_response_only=True,
            result_path=result_path,
        )

    def _allow_training_jobs(self, machine: sfn.StateMachine) -> None:
        """What createTrainingJob.sync needs (Step Functions' documented policy), scoped to
        gallop's jobs, the one EventBridge rule .sync manages, and the one role."""
        stack = Stack.of(self)
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                    "sagemaker:ListTags",
                ],
                resources=[self.job_arn(JOB_PREFIX + "*")],
            )
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForSageMakerTrainingJobsRule",
                    )
                ],
            )
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.sagemaker_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            )
        )
