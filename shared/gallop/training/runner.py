"""The local training runner: the SageMaker jobs in subprocesses, each with its own
/opt/ml tree (the container's paths and environment), base jobs in parallel, then the
stack job. The same jobs run on SageMaker in AWS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gallop.ingest.canonical import to_parquet
from gallop.layout import FEATURES_FILE, MANIFEST_FILE
from gallop.manifests import FeatureManifest
from gallop.models.catalogue import CATALOGUE, missing_library
from gallop.training.config import DEFAULT_BASES, with_search_budget
from gallop.training.contract import PARENT_ENV

REPO = Path(__file__).resolve().parents[3]


JOB_STOP_GRACE_SECONDS = 5.0  # between asking a job to stop (SIGTERM) and killing it


class TrainingFailed(RuntimeError):
    pass


class Jobs:
    """The job subprocesses of one run, stopped together: on request (a cancelled run) or
    at its time limit. A run that is stopped starts no more jobs."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self.stopped: str | None = None  # why, once stopped

    def run(self, command: list[str], **options: Any) -> tuple[int, str]:
        """Run a job to its end: (exit status, its output). TrainingFailed, saying why,
        when the run was stopped before or while it ran."""
        with self._lock:
            if self.stopped:
                raise TrainingFailed(self.stopped)
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # The job ends with this process, however it ends (contract.die_with_parent).
                env={**options.pop("env"), PARENT_ENV: str(os.getpid())},
                **options,
            )
            self._running.add(process)
        try:
            output, _ = process.communicate()
        finally:
            with self._lock:
                self._running.discard(process)
        if self.stopped:
            raise TrainingFailed(self.stopped)
        return process.returncode, output

    def stop(self, reason: str) -> None:
        """Stop every running job: SIGTERM, then SIGKILL after a grace period."""
        with self._lock:
            self.stopped = self.stopped or reason
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(JOB_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass(frozen=True)
class JobResult:
    name: str
    seconds: float
    model_dir: Path


def write_channel(path: Path, frame: pd.DataFrame, manifest: FeatureManifest) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / FEATURES_FILE).write_bytes(to_parquet(frame))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def holdout_split(
    frame: pd.DataFrame, manifest: FeatureManifest, share: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test). With a time column, the last `share` of groups (or rows) by time is
    held out, so nothing looks ahead; otherwise a seeded random `share` of the groups (or
    rows). A group never straddles the two."""
    if not 0 < share < 1:
        raise TrainingFailed(f"the test share must be between 0 and 1, not {share}")
    time_column, group = manifest.get("time"), manifest.get("group")
    units = frame[group] if group else pd.Series(np.arange(len(frame)), index=frame.index)
    if time_column:
        first = frame.groupby(units.to_numpy())[time_column].min().sort_values(kind="mergesort")
        ordered = first.index.to_numpy()
    else:
        ordered = np.random.default_rng(seed).permutation(np.unique(units.to_numpy()))
    held = ordered[int(len(ordered) * (1 - share)) :]
    if len(held) == 0 or len(held) == len(ordered):
        raise TrainingFailed(f"{len(ordered)} groups are too few to hold {share:.0%} out")
    test = units.isin(set(held.tolist())).to_numpy()
    return frame[~test], frame[test]


def run_job(job: str, base: Path, hyperparameters: dict[str, Any], jobs: Jobs) -> None:
    (base / "input" / "config").mkdir(parents=True, exist_ok=True)
    # SageMaker hands every value over as a string; so does this runner.
    as_strings = {key: json.dumps(value) for key, value in hyperparameters.items()}
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(as_strings))
    env = {**os.environ, "GALLOP_OPT_ML": str(base)}
    status, output = jobs.run([sys.executable, "-m", f"training_jobs.{job}"], cwd=REPO, env=env)
    (base / "output").mkdir(parents=True, exist_ok=True)
    (base / "output" / "log.txt").write_text(output)
    if status != 0:
        failure = base / "output" / "failure"
        reason = failure.read_text().split("\n\n")[0] if failure.exists() else output[-500:]
        raise TrainingFailed(f"{job} job failed: {reason}")


def train_locally(
    train: pd.DataFrame,
    test: pd.DataFrame,
    manifest: FeatureManifest,
    work: Path,
    bases: tuple[str, ...] | None = None,
    progress: Callable[[str], None] = print,
    parallel: int = 2,
    base_hyperparameters: dict[str, Any] | None = None,
    stack_hyperparameters: dict[str, Any] | None = None,
    jobs: Jobs | None = None,
) -> Path:
    """Run the base jobs (in parallel) and the stack job; returns the stack's model dir
    (model.onnx, manifest.json, report.html and the base models). `jobs`: to stop them
    from another thread."""
    jobs = jobs or Jobs()
    bases = bases or DEFAULT_BASES[manifest["task"]]
    missing = {missing_library(CATALOGUE[b].family) for b in bases if b in CATALOGUE} - {None}
    if missing:  # before any job starts, not after the others have run
        raise TrainingFailed("; ".join(sorted(str(reason) for reason in missing)))
    work = work.resolve()  # the jobs run in the repository, not in the caller's folder
    shutil.rmtree(work, ignore_errors=True)
    channel = work / "channels"
    write_channel(channel / "train", train, manifest)
    write_channel(channel / "test", test, manifest)

    bases = bases or DEFAULT_BASES[manifest["task"]]
    hyperparameters = with_search_budget(base_hyperparameters or {}, len(bases), parallel)

    def base_job(index: int, model: str) -> JobResult:
        started = time.monotonic()
        tree = work / f"base-{index}-{model}"
        for name in ("train", "test"):  # the final phase refits on both
            shutil.copytree(channel / name, tree / "input" / "data" / name)
        run_job("base", tree, {**hyperparameters, "model": model}, jobs)
        seconds = time.monotonic() - started
        progress(f"  base {model}: done in {seconds:.1f} s")
        return JobResult(model, seconds, tree / "model")

    progress(f"training {len(bases)} base models ({parallel} at a time) ...")
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(lambda item: base_job(*item), enumerate(bases)))
    stack = work / "stack"
    for i, result in enumerate(results):
        shutil.copytree(result.model_dir, stack / "input" / "data" / "bases" / f"base-{i}")
    for name in ("train", "test"):
        shutil.copytree(channel / name, stack / "input" / "data" / name)
    progress("stacking, evaluating and exporting one ONNX graph ...")
    started = time.monotonic()
    run_job("stack", stack, stack_hyperparameters or {}, jobs)
    progress(f"  stack: done in {time.monotonic() - started:.1f} s")
    return stack / "model"
