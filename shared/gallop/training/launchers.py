"""Starting a training run: in this process (local), or as a Step Functions execution.

Either way the run ends SUCCEEDED with a registered model or FAILED with a reason. The
local launcher runs the same SageMaker entry points through gallop.training.runner, one
run at a time in a daemon thread (each run already keeps two cores busy).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine

from gallop import aws
from gallop.metadata.models import RunStatus, TrainingRun
from gallop.settings import Settings
from gallop.storage import Store
from gallop.training import runs
from gallop.training.artifacts import publish_model_dir
from gallop.training.config import base_hyperparameters, run_deadline, stack_hyperparameters
from gallop.training.sagemaker import execution_name, training_execution_input

if TYPE_CHECKING:
    from gallop.training.runner import Jobs

log = logging.getLogger(__name__)


class Launcher(Protocol):
    def launch(self, run: TrainingRun) -> TrainingRun:
        """Start a PENDING run; returns it as it stands afterwards."""
        ...

    def stop(self, run: TrainingRun) -> None:
        """Stop what still runs of a run just marked CANCELLED."""
        ...

    def close(self) -> None:
        """The server is stopping: stop what trains in this process."""
        ...


def launcher_for(settings: Settings, engine: Engine, data: Store, artifacts: Store) -> Launcher:
    if settings.training_launcher == "stepfunctions":
        return StepFunctionsLauncher(settings, engine)
    return LocalLauncher(
        engine, data, artifacts, settings.state_dir / "training", settings.run_time_limit_default
    )


class LocalLauncher:
    def __init__(
        self,
        engine: Engine,
        data: Store,
        artifacts: Store,
        work_root: Path,
        default_time_limit: float,
    ) -> None:
        self.engine = engine
        self.data = data
        self.artifacts = artifacts
        self.work_root = work_root
        self.default_time_limit = default_time_limit
        self._queue: queue.Queue[str] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._jobs: dict[str, Jobs] = {}  # of the run in training

    def launch(self, run: TrainingRun) -> TrainingRun:
        runs.set_execution(self.engine, run.run_id, runs.LOCAL_EXECUTION)
        self._queue.put(run.run_id)
        with self._lock:
            if self._worker is None:
                # A daemon: stopping `gallop serve` does not wait for a run; the next start
                # marks it interrupted.
                self._worker = threading.Thread(target=self._work, name="training", daemon=True)
                self._worker.start()
        return runs.get_run(self.engine, run.run_id)

    def _work(self) -> None:
        while True:
            run_id = self._queue.get()
            try:
                self.run(run_id)
            except Exception:  # the worker must outlive a database hiccup
                log.exception("could not record the outcome of training run %s", run_id)

    def stop(self, run: TrainingRun) -> None:
        """A queued run is skipped when its turn comes; a training one's jobs are stopped."""
        with self._lock:
            jobs = self._jobs.get(run.run_id)
        if jobs is not None:
            jobs.stop(runs.CANCELLED)

    def close(self) -> None:
        """Stop the runs training here (they fail as interrupted: POST them again); without
        this, exit would wait for their base jobs' threads, however long they train."""
        with self._lock:
            training = list(self._jobs.values())
        for jobs in training:
            jobs.stop(runs.INTERRUPTED)

    def run(self, run_id: str) -> None:
        """Train, store and register the run's model; any failure → FAILED with why. A run
        is stopped at its time_limit, or the default one."""
        from gallop.training.runner import Jobs, TrainingFailed

        run = runs.get_run(self.engine, run_id)
        if run.status != RunStatus.PENDING.value:  # cancelled while it waited
            return
        limit = run_deadline(run.config["hyperparameters"], self.default_time_limit)
        jobs = Jobs()
        deadline = threading.Timer(limit, jobs.stop, [f"stopped after {limit:g} s: its time limit"])
        deadline.daemon = True
        with self._lock:
            self._jobs[run_id] = jobs
        deadline.start()
        try:
            self._train(run, jobs)
        except (TrainingFailed, runs.RunCancelled) as exc:
            runs.mark_run_failed(self.engine, run_id, str(exc))  # a CANCELLED run stays so
        except Exception as exc:  # whatever broke, the run must not stay RUNNING
            log.exception("training run %s failed", run_id)
            runs.mark_run_failed(self.engine, run_id, f"{type(exc).__name__}: {exc}")
        finally:
            deadline.cancel()
            with self._lock:
                self._jobs.pop(run_id, None)

    def _train(self, run: TrainingRun, jobs: Jobs) -> None:
        from gallop.training.channels import load_run_data
        from gallop.training.runner import train_locally

        runs.mark_running(self.engine, run.run_id, runs.LOCAL_EXECUTION, "preparing the data")
        data = load_run_data(self.engine, self.data, run)
        work = self.work_root / run.run_id
        model_dir = train_locally(
            data.train,
            data.test,
            data.manifest,
            work,
            bases=tuple(run.config["bases"]),
            progress=self._progress(run.run_id, len(run.config["bases"])),
            stack_hyperparameters=stack_hyperparameters(
                run.config, run.run_id, run.version_id, run.code_version
            ),
            base_hyperparameters=base_hyperparameters(run.config),
            jobs=jobs,
        )
        runs.set_stage(self.engine, run.run_id, "storing the model")
        prefix = publish_model_dir(self.artifacts, run.run_id, model_dir)
        runs.register_model(self.engine, self.artifacts, run.run_id, prefix)
        shutil.rmtree(work, ignore_errors=True)  # a failed run's folder stays, to look into

    def _progress(self, run_id: str, bases: int) -> Callable[[str], None]:
        """The runner's progress lines as the run's stage ("base 2/3 done")."""
        done = 0
        lock = threading.Lock()

        def report(line: str) -> None:
            nonlocal done
            stage = line.strip()
            with lock:  # base jobs finish on the runner's worker threads
                if stage.startswith("base ") and "done" in stage:
                    done += 1
                    stage = f"base {done}/{bases} done"
                runs.set_stage(self.engine, run_id, stage)

        return report


class StepFunctionsLauncher:
    """Start the training state machine on the run's feature set."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    def launch(self, run: TrainingRun) -> TrainingRun:
        try:
            execution = self._start(run)
        except Exception as exc:  # a run that cannot start must say why, not stay PENDING
            log.exception("training run %s could not start", run.run_id)
            return runs.mark_run_failed(
                self.engine, run.run_id, f"could not start: {type(exc).__name__}: {exc}"
            )
        runs.mark_running(self.engine, run.run_id, execution, "training on SageMaker")
        return runs.get_run(self.engine, run.run_id)

    def stop(self, run: TrainingRun) -> None:
        """Stop the run's execution: Step Functions stops the SageMaker job it waits on
        (.sync). An execution that already ended is left as it is."""
        if not run.execution or run.execution == runs.LOCAL_EXECUTION:
            return  # it never started
        client = aws.client("stepfunctions", self.settings)
        try:
            client.stop_execution(executionArn=run.execution, cause=runs.CANCELLED)
        except client.exceptions.ExecutionDoesNotExist:
            log.warning("training run %s: no execution %s to stop", run.run_id, run.execution)

    def close(self) -> None:
        """Executions run on in AWS, and end there."""

    def _start(self, run: TrainingRun) -> str:
        reply: dict[str, Any] = aws.client("stepfunctions", self.settings).start_execution(
            stateMachineArn=self.settings.training_state_machine_arn,
            name=execution_name(run),
            input=json.dumps(training_execution_input(run, self.settings)),
        )
        return str(reply["executionArn"])
