"""What the training state machine is started with: one complete CreateTrainingJob
request per base model and one for the stack job, built from the run alone.

The state machine runs the base jobs in parallel, then the stack job, then the register
Lambda with the stack job's model.tar.gz (or the failed action with the error).
Job names are deterministic (run id, attempt, job) and unique per attempt, as SageMaker
requires; the base jobs' names share a prefix, so the stack job's `bases` channel is one
S3 prefix holding every base job's output. The train channel is the version's feature
set as the features function wrote it, and every job holds out the same test share
itself: nothing here reads the data, so the API needs neither pandas nor pyarrow.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gallop.layout import features_prefix, training_prefix
from gallop.metadata.models import TrainingRun
from gallop.settings import Settings
from gallop.training.config import (
    BASE_JOBS_AT_ONCE,
    base_hyperparameters,
    run_deadline,
    stack_hyperparameters,
    with_search_budget,
)

INSTANCE_TYPE = "ml.m5.large"
VOLUME_GB = 30
METRIC_PATTERN = "#metric {name}=([-0-9.eE]+)"
# What the jobs print as `#metric name=value` (gallop.training.contract.emit_metric), by
# task; the stack job writes its held-out metrics with '@' as '_at_'.
BASE_METRICS = {
    "ranking": ("oof_ndcg@1", "oof_ndcg@3", "oof_ndcg@5"),
    "binary": ("oof_auc",),
    "regression": ("oof_rmse",),
}
STACK_METRICS = {
    "ranking": (
        "ndcg_at_1",
        "ndcg_at_3",
        "ndcg_at_4",
        "ndcg_at_5",
        "ndcg_at_10",
        "top1_hit_rate",
        "race_log_loss",
        "race_brier",
        "ece",
    ),
    "binary": ("auc", "log_loss", "brier", "ece"),
    "regression": ("rmse", "mae", "r2", "coverage", "interval_width"),
}
PARITY_METRIC = "onnx_parity_max_abs"


def training_execution_input(run: TrainingRun, settings: Settings) -> dict[str, Any]:
    """{"run_id", "base_jobs": [CreateTrainingJob kwargs, ...], "stack_job": kwargs}."""
    task = run.config["task"]
    features = features_prefix(run.config["dataset"], run.version_id, run.spec_hash)
    train = _s3_channel("train", settings.data_bucket, features)
    split = {"test_share": run.config["test_share"]}
    hyperparameters = with_search_budget(
        base_hyperparameters(run.config), len(run.config["bases"]), BASE_JOBS_AT_ONCE
    )
    base_jobs = [
        _job(
            run,
            settings,
            base_job_name(run, index, model),
            {"job": "base", **hyperparameters, **split, "model": model},
            [train],
            BASE_METRICS[task],
        )
        for index, model in enumerate(run.config["bases"])
    ]
    bases = _s3_channel(
        "bases",
        settings.artifacts_bucket,
        f"{training_prefix(run.run_id)}{job_name_prefix(run)}base-",
    )
    stack_job = _job(
        run,
        settings,
        stack_job_name(run),
        {
            "job": "stack",
            **split,
            **stack_hyperparameters(run.config, run.run_id, run.version_id, run.code_version),
        },
        [train, bases],
        (*STACK_METRICS[task], PARITY_METRIC),
    )
    return {"run_id": run.run_id, "base_jobs": base_jobs, "stack_job": stack_job}


def execution_name(run: TrainingRun) -> str:
    return f"{run.run_id}-{run.attempt}"


def job_name_prefix(run: TrainingRun) -> str:
    return f"g-{run.run_id}-a{run.attempt}-"


def base_job_name(run: TrainingRun, index: int, model: str) -> str:
    return _job_name(f"{job_name_prefix(run)}base-{index}-{model}")


def stack_job_name(run: TrainingRun) -> str:
    return _job_name(f"{job_name_prefix(run)}stack")


def _job_name(name: str) -> str:
    """SageMaker's rule: at most 63 of [a-zA-Z0-9-]."""
    cleaned = re.sub(r"[^a-zA-Z0-9-]", "-", name)
    if len(cleaned) > 63:
        raise ValueError(f"training job name {cleaned!r} is longer than 63 characters")
    return cleaned


def _job(
    run: TrainingRun,
    settings: Settings,
    name: str,
    hyperparameters: dict[str, Any],
    channels: list[dict[str, Any]],
    metrics: tuple[str, ...],
) -> dict[str, Any]:
    assert settings.training_image and settings.sagemaker_role_arn  # checked at cold start
    output: dict[str, Any] = {
        "S3OutputPath": f"s3://{settings.artifacts_bucket}/{training_prefix(run.run_id)}"
    }
    if settings.training_kms_key_id:
        output["KmsKeyId"] = settings.training_kms_key_id
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": settings.training_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": metric, "Regex": METRIC_PATTERN.format(name=re.escape(metric))}
                for metric in metrics
            ],
        },
        "RoleArn": settings.sagemaker_role_arn,
        # SageMaker passes every value as a string; the jobs decode JSON.
        "HyperParameters": {key: json.dumps(value) for key, value in hyperparameters.items()},
        "InputDataConfig": channels,
        "OutputDataConfig": output,
        "ResourceConfig": {
            "InstanceType": INSTANCE_TYPE,
            "InstanceCount": 1,
            "VolumeSizeInGB": VOLUME_GB,
        },
        # No job outlives the run's time limit (SageMaker stops it, and the run fails).
        "StoppingCondition": {
            "MaxRuntimeInSeconds": math.ceil(
                run_deadline(run.config["hyperparameters"], settings.run_time_limit_default)
            )
        },
        "Tags": [
            {"Key": "gallop:run-id", "Value": run.run_id},
            {"Key": "gallop:dataset", "Value": run.config["dataset"]},
            {"Key": "gallop:job", "Value": str(hyperparameters["job"])},
        ],
    }


def _s3_channel(name: str, bucket: str, prefix: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": f"s3://{bucket}/{prefix}",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
