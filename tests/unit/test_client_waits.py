"""GallopClient's waits: exponential backoff within the timeout, and Retry-After honoured.

The server is httpx's MockTransport and the clock a fake one that moves when the client
sleeps, so half an hour of waiting takes no time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

import gallop.client
from gallop.client import ApiError, GallopClient


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(gallop.client, "monotonic", fake.monotonic)
    monkeypatch.setattr(gallop.client, "sleep", fake.sleep)
    return fake


Answer = Callable[[httpx.Request], httpx.Response]


def client_of(answer: Answer) -> Iterator[GallopClient]:
    client = GallopClient("http://gallop.test", "key", transport=httpx.MockTransport(answer))
    yield client
    client.close()


def run(status: str, **headers: str) -> httpx.Response:
    return httpx.Response(200, json={"run_id": "r1", "status": status}, headers=headers)


def test_a_half_hour_wait_for_a_run_is_a_few_hundred_calls(clock: FakeClock) -> None:
    # GIVEN a run that ends after 29 minutes
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now)
        return run("SUCCEEDED" if clock.now >= 29 * 60 else "RUNNING")

    # WHEN the client waits for it
    for client in client_of(answer):
        done = client.wait_for_training_run("r1", timeout=1800)

    # THEN it saw the end within one longest pause, having called a few hundred times
    # (a fixed 0.2 s pause is 8,700 calls)
    assert done["status"] == "SUCCEEDED"
    assert 29 * 60 <= clock.now <= 29 * 60 + 5.0
    assert len(calls) < 370
    # the pauses grow by half each time from 0.2 s, up to 5 s
    assert clock.sleeps[:4] == pytest.approx([0.2, 0.3, 0.45, 0.675])
    assert max(clock.sleeps) == 5.0


def test_retry_after_of_a_429_and_of_an_answer_is_honoured(clock: FakeClock) -> None:
    # GIVEN a server that first throttles (429, Retry-After: 7), then says to come back in
    # 3 s, then that the run has ended
    answers = iter(
        [
            httpx.Response(429, json={"code": "throttled"}, headers={"Retry-After": "7"}),
            run("RUNNING", **{"Retry-After": "3"}),
            run("SUCCEEDED"),
        ]
    )

    for client in client_of(lambda request: next(answers)):
        done = client.wait_for_training_run("r1", timeout=60)

    # THEN the client waited as long as it was asked, longer than its own pauses
    assert done["status"] == "SUCCEEDED"
    assert clock.sleeps == [7.0, 3.0]


def test_a_wait_ends_at_its_timeout_with_a_last_look_at_the_deadline(clock: FakeClock) -> None:
    looked = []

    def answer(request: httpx.Request) -> httpx.Response:
        looked.append(clock.now)
        # a Retry-After beyond the deadline does not carry the wait past it
        return httpx.Response(200, json={"status": "PENDING"}, headers={"Retry-After": "100"})

    for client in client_of(answer):
        with pytest.raises(TimeoutError, match="upload u1 still PENDING after 10 s"):
            client.wait_for_upload("races", "u1", timeout=10)

    assert looked == [0.0, 10.0]


def test_an_error_other_than_busy_ends_the_wait_at_once(clock: FakeClock) -> None:
    for client in client_of(lambda request: httpx.Response(404, json={"detail": "no run"})):
        with pytest.raises(ApiError) as raised:
            client.wait_for_training_run("r1", timeout=60)
    assert raised.value.status_code == 404 and clock.sleeps == []
