"""The SageMaker training-container contract, honoured and testable.

Every path hangs off one base directory (default /opt/ml; GALLOP_OPT_ML overrides it,
so tests build a fake tree in a temporary folder): hyperparameters in
input/config/hyperparameters.json (SageMaker passes every value as a string, decoded
here), channels in input/data/<channel>/, artifacts to model/, and on error the reason
in output/failure with a non-zero exit. Metrics are printed as `#metric name=value`
for the training job's metric definitions (regex `#metric name=([-0-9.eE]+)`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

BASE_ENV = "GALLOP_OPT_ML"
DEFAULT_BASE = Path("/opt/ml")
# Set by the local runner: the pid of the process the job must not outlive.
PARENT_ENV = "GALLOP_JOB_PARENT_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class JobError(Exception):
    """A failure the job explains to its caller (bad hyperparameter, empty channel ...)."""


@dataclass(frozen=True)
class Container:
    base: Path

    @classmethod
    def from_environment(cls) -> Container:
        return cls(Path(os.environ.get(BASE_ENV, DEFAULT_BASE)))

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def failure_path(self) -> Path:
        return self.base / "output" / "failure"

    def channel(self, name: str) -> Path:
        path = self.base / "input" / "data" / name
        if not path.is_dir() or not any(p.is_file() for p in path.rglob("*")):
            raise JobError(f"channel {name!r} is empty or missing ({path})")
        return path

    def hyperparameters(self) -> dict[str, Any]:
        path = self.base / "input" / "config" / "hyperparameters.json"
        if not path.exists():
            return {}
        return {key: decode(value) for key, value in json.loads(path.read_text()).items()}


def decode(value: Any) -> Any:
    """SageMaker passes "100", "0.05", "true", "[3, 5]" as strings; plain words stay text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def emit_metric(name: str, value: float) -> None:
    print(f"#metric {name}={value:.6f}", flush=True)


def die_with_parent() -> None:
    """A job the local runner started ends when the runner's process does, even when that
    is killed outright (SIGKILL: nothing of it runs to stop its jobs). On Linux the kernel
    sends the job SIGKILL then (prctl PR_SET_PDEATHSIG, asked from the job itself: a
    preexec_fn is not safe in the runner's threaded process); elsewhere a thread watches
    for the parent to go. On SageMaker (no PARENT_ENV) there is no parent to outlive."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()
    if os.getppid() != int(parent):  # it died before the job could ask
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def run(main: Callable[[Container], None]) -> NoReturn:
    """Run a job's main; on any error write the reason to output/failure and exit 1."""
    die_with_parent()
    container = Container.from_environment()
    try:
        main(container)
    except Exception as exc:  # every failure must reach output/failure, explained
        reason = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
        container.failure_path.parent.mkdir(parents=True, exist_ok=True)
        container.failure_path.write_text(reason + "\n\n" + traceback.format_exc()[-4000:])
        print(f"job failed: {reason}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0)
