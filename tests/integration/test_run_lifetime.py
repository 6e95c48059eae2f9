"""A local training run's job processes live no longer than the run, or the server: a
cancelled run's jobs are stopped, and killing `gallop serve` (SIGTERM or SIGKILL) ends
them too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gallop.client import ApiError, GallopClient
from gallop.local.stack import LocalStack, free_port
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from tests.conftest import spec_named, unique_name
from tests.e2e.test_features_e2e import ingest

# One base that boosts as long as it is allowed: nothing stops it early.
ENDLESS = {
    "bases": ["lambdarank"],
    "hyperparameters": {
        "num_boost_round": 10_000,
        "early_stopping_rounds": 10_000,
        "learning_rate": 1e-4,
        "folds": 2,
    },
}


def job_processes(parent: int) -> list[int]:
    """The training jobs `parent` runs (read from /proc: there is no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"training_jobs." in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ready_dataset(client: GallopClient, races_spec: DatasetSpec) -> str:
    """A dataset of 200 generated races whose features are READY; its name."""
    spec = spec_named(races_spec, unique_name("life"))
    runners, _ = generate_races(200, seed=5)
    version_id = ingest(client, spec, runners.to_csv(index=False).encode())
    assert client.wait_for_features(spec.name, version_id, timeout=120)["status"] == "READY"
    return spec.name


def test_a_cancelled_run_ends_cancelled_and_its_jobs_are_gone(
    stack: LocalStack, client: GallopClient, races_spec: DatasetSpec
) -> None:
    # GIVEN a run whose base job is training
    run = client.start_training_run(ready_dataset(client, races_spec), **ENDLESS)
    wait_for(lambda: job_processes(os.getpid()), 60, "the base job to start")
    jobs = job_processes(os.getpid())
    # WHEN it is cancelled
    cancel = httpx.delete(
        f"{stack.api_url}/v1/training-runs/{run['run_id']}",
        headers={"x-api-key": stack.api_key},
        timeout=30,
    )
    # THEN it is CANCELLED at once, and its job processes are gone within seconds
    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["status"] == "CANCELLED"
    wait_for(lambda: not any(map(alive, jobs)), 10, "the cancelled run's jobs to end")
    # AND it stays CANCELLED (the stopped job does not fail it), and no stack job starts
    time.sleep(1)
    assert client.training_run(run["run_id"])["status"] == "CANCELLED"
    assert job_processes(os.getpid()) == []
    # AND a run that has ended cannot be cancelled again; an unknown one is not found
    again = httpx.delete(
        f"{stack.api_url}/v1/training-runs/{run['run_id']}",
        headers={"x-api-key": stack.api_key},
    )
    assert again.status_code == 409 and "CANCELLED" in again.json()["detail"]
    unknown = httpx.delete(
        f"{stack.api_url}/v1/training-runs/{'ab' * 10}",
        headers={"x-api-key": stack.api_key},
    )
    assert unknown.status_code == 404
    # AND posted again, it starts anew as the next attempt
    restarted = client.start_training_run(run["config"]["dataset"], **ENDLESS)
    assert (restarted["run_id"], restarted["attempt"]) == (run["run_id"], 2)
    client.cancel_training_run(run["run_id"])


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"num_boost_round": 10**9}, "expected a whole number from 1 to 10000"),
        ({"num_boost_round": True}, "num_boost_round"),
    ],
    ids=["10^9-rounds", "true-as-a-number"],
)
def test_a_run_of_a_billion_rounds_is_refused_through_the_stack_and_nothing_is_queued(
    client: GallopClient, races_spec: DatasetSpec, hyperparameters: dict, message: str
) -> None:
    """The red team's 10^9-round run was answered 202 and ran without limit."""
    spec = spec_named(races_spec, unique_name("bound"))
    client.register_dataset(spec)
    with pytest.raises(ApiError) as refused:
        client.start_training_run(spec.name, hyperparameters=hyperparameters)
    assert refused.value.status_code == 422 and message in str(refused.value)
    assert client.training_runs(spec.name) == []


@pytest.fixture()
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], GallopClient]]:
    """`gallop serve` in its own process, and a client of its API."""
    port = free_port()
    env = {**os.environ, "GALLOP_MAX_UPLOAD_BYTES": "1000000"}
    env.pop("GALLOP_API_KEYS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gallop.cli", "serve", "--state-dir", str(tmp_path)]
        + ["--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key_file = tmp_path / "api_key"
    wait_for(lambda: (tmp_path / "endpoints.json").exists(), 60, "gallop serve to start")
    client = GallopClient(f"http://127.0.0.1:{port}", key_file.read_text().strip())
    wait_for(lambda: _answers(client), 30, "the API to answer")
    yield server, client
    client.close()
    if server.poll() is None:
        server.kill()
    server.wait()


def _answers(client: GallopClient) -> bool:
    try:
        client.health()
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_gallop_serve_ends_its_training_jobs(
    serving: tuple[subprocess.Popen[bytes], GallopClient],
    races_spec: DatasetSpec,
    how: signal.Signals,
) -> None:
    # GIVEN gallop serve training a run
    server, client = serving
    client.start_training_run(ready_dataset(client, races_spec), **ENDLESS)
    wait_for(lambda: job_processes(server.pid), 60, "the base job to start")
    jobs = job_processes(server.pid)
    # WHEN the server is killed
    server.send_signal(how)
    server.wait(timeout=30)
    # THEN its job processes end within a few seconds
    wait_for(lambda: not any(map(alive, jobs)), 10, f"the jobs to end after {how.name}")
