"""The training image's entry point (its ENTRYPOINT; layers/build.py copies it in).

SageMaker starts a training container with the single argument `train`. This runs
`python -m training_jobs.<job>`, the job named by the hyperparameter `job` ("base" or
"stack"; SageMaker passes it JSON-encoded, '"base"'). It replaces itself with the job
(exec), so the job gets SageMaker's SIGTERM on StopTrainingJob and its exit code is
the container's. A wrong start is explained in output/failure, as a job's error is.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from gallop.training.contract import Container

JOBS = ("base", "stack")


def fail(container: Container, reason: str) -> NoReturn:
    container.failure_path.parent.mkdir(parents=True, exist_ok=True)
    container.failure_path.write_text(reason + "\n")
    print(f"job failed: {reason}", file=sys.stderr, flush=True)
    sys.exit(1)


def job_module(container: Container, argv: list[str]) -> str:
    if argv != ["train"]:
        fail(container, f"the training image runs as `train` (SageMaker's argument), got {argv}")
    try:
        hyperparameters = container.hyperparameters()
    except ValueError as exc:  # not JSON at all
        fail(container, f"hyperparameters.json cannot be read: {exc}")
    job = hyperparameters.get("job")  # decoded: '"base"' is "base"
    if job not in JOBS:
        fail(container, f"hyperparameter job={job!r}: use one of {', '.join(JOBS)}")
    return f"training_jobs.{job}"


def main(argv: list[str]) -> NoReturn:
    module = job_module(Container.from_environment(), argv)
    print(f"gallop: running {module}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", module])


if __name__ == "__main__":
    main(sys.argv[1:])
