"""Renewing a champion through the local stack, on races whose truth is known: two
datasets, each with a champion and a challenger (tiny linear rankers that score the same
runners differently) and the challenger in shadow on every race. Each dataset's champion
answers race rows over HTTP; capture lands both models' rows in S3 (Firehose); the races'
results are then DRAWN from one model's own win probabilities (dataset `p`: the
challenger's, dataset `k`: the champion's) and appended through ingest, which runs the
monitor. The comparison must recommend the model the results came from ("promote" on `p`,
"keep" on `k`); `p`'s recommendation opens an approval request that only an approver can
decide; approval makes the challenger the champion that predict answers with; a second
request expires by a monitor run; a rollback goes back one step and no further; and the
alias history says who did what, from which model to which, and why."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gallop.client import ApiError, GallopClient
from gallop.local.stack import LocalStack, free_port
from gallop.metadata import repo
from gallop.metadata.db import engine_for
from gallop.monitoring.capture import read_captured
from gallop.renewal import approvals
from gallop.serving.registry import model_prefix
from gallop.spec import DatasetSpec
from gallop.storage import Store
from tests.conftest import TEST_LIMITS, unique_name
from tests.integration.test_approvals import add_model
from tests.integration.test_capture import linear_ranker_files
from tests.integration.test_traffic import RUNNERS, races

RACES = 120  # predicted races per dataset, all with results
MIN_RACES = 100  # renewal_min_races: the comparison may recommend on RACES paired races
# Coefficients over (x0, x1, going): one model ranks by x0, the other by x1, so each
# puts its own runners first; the results' model is right, the other mostly wrong.
BY_X0, BY_X1, BY_BOTH = [2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The module's one local stack (moto is process-wide), with a reader key and a
    writer key beside the default key `local` (every role)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    overrides = TEST_LIMITS | {"GALLOP_RENEWAL_MIN_RACES": str(MIN_RACES)}
    with LocalStack(
        tmp_path_factory.mktemp("state"),
        quiet=True,
        settings_overrides=overrides,
        visibility_timeout=1,
        role_keys={"viewer": "reader", "ci": "reader+writer"},
    ) as local:
        local.serve_api(free_port())
        yield local
    mp.undo()


@pytest.fixture(scope="module")
def clients(stack: LocalStack) -> Iterator[dict[str, GallopClient]]:
    """A client per key, by the key's name: local (every role), viewer, ci."""
    assert stack.api_url is not None
    secrets = {"local": stack.api_key} | stack.api_keys
    by_name = {name: GallopClient(stack.api_url, secret) for name, secret in secrets.items()}
    yield by_name
    for client in by_name.values():
        client.close()


@pytest.fixture(scope="module")
def world(stack: LocalStack, clients: dict[str, GallopClient]) -> dict[str, Any]:
    """Both datasets after their races were served and their results appended, and the
    monitor run that ingest's announcement of the results starts has finished (it opened
    p's approval request)."""
    assert stack.settings is not None
    client = clients["local"]
    engine = engine_for(stack.settings.sqlalchemy_url)
    artifacts = Store.artifacts_from_settings(stack.settings)
    data = Store.from_settings(stack.settings)
    # dataset p: the results follow the challenger; dataset k: the champion
    names = {"p": unique_name("renew-p"), "k": unique_name("renew-k")}
    world: dict[str, Any] = {"names": names, "engine": engine}
    for tag, seed in (("p", 1), ("k", 2)):
        columns, rows = races(10, f"{tag}-old", seed=seed)
        history = _with_positions(columns, rows, np.random.default_rng(seed))
        client.register_dataset(_spec(names[tag]))
        uploaded = client.upload_bytes(names[tag], history.to_csv(index=False).encode(), "csv")
        version = client.wait_for_upload(names[tag], uploaded, timeout=60)
        assert version["status"] == "VALID", version
        dataset = repo.get_dataset(engine, names[tag])
        world[tag] = {
            role: _linear_model(engine, artifacts, dataset, coef, version["version_id"])
            for role, coef in (("champion", BY_X0), ("challenger", BY_X1))
        }
    _settle(stack)

    # GIVEN each dataset's champion, its challenger in shadow on every race
    for tag in ("p", "k"):
        client.promote(world[tag]["champion"], "champion", reason="the first champion")
        client.promote(world[tag]["challenger"], "challenger", reason="a rival in shadow")
        policy = client.put_traffic(names[tag], "shadow", shadow_share=1.0)
        assert (policy["mode"], policy["shadow_share"]) == ("shadow", 1.0)

    # WHEN the champion answers RACES races' rows
    served: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for tag, seed in (("p", 11), ("k", 12)):
        columns, rows = races(RACES, f"{tag}-{uuid.uuid4().hex[:6]}", seed=seed)
        reply = client.predict("champion", dataset=names[tag], columns=columns, data=rows)
        assert reply["model_id"] == world[tag]["champion"]
        assert len(reply["predictions"]) == RACES * RUNNERS
        served[tag] = columns, rows
    # THEN both models' rows reach S3 through capture (the challenger's as shadow)
    for tag in ("p", "k"):
        for role in ("champion", "challenger"):
            _wait_captured(data, names[tag], world[tag][role], RACES * RUNNERS)

    # WHEN the races are run: each dataset's results drawn from one model's own win
    # probabilities, as it served them (p: the challenger's, k: the champion's), appended
    truth = {"p": "challenger", "k": "champion"}
    for tag, seed in (("p", 21), ("k", 22)):
        captured = read_captured(data, names[tag], world[tag][truth[tag]])
        columns, rows = served[tag]
        results = _drawn_results(columns, rows, captured, np.random.default_rng(seed))
        appended = client.upload_bytes(
            names[tag], results.to_csv(index=False).encode(), "csv", mode="append"
        )
        status = client.wait_for_upload(names[tag], appended, timeout=60)
        assert status["status"] == "VALID", status
    _settle(stack)
    return world


def _spec(name: str) -> DatasetSpec:
    """The columns `races` writes, with a finishing position."""
    return DatasetSpec.model_validate(
        {
            "name": name,
            "task": "ranking",
            "target": "position",
            "target_order": "ascending",
            "group": "race",
            "entity": "runner",
            "features": ["x0", "x1"],
            "categorical": ["going"],
        }
    )


def _linear_model(
    engine: Any, artifacts: Store, dataset: Any, coef: list[float], version: str
) -> str:
    """A registered model (add_model's row: promotion needs one) whose files are a tiny
    linear ranker's instead of add_model's placeholders: it answers predictions."""
    model_id = add_model(engine, artifacts, dataset, uuid.uuid4().hex, version=version)
    for name, data in linear_ranker_files(coef, dataset.name).items():
        artifacts.put_bytes(model_prefix(model_id) + name, data, "application/octet-stream")
    return model_id


def _with_positions(
    columns: list[str], rows: list[list[Any]], rng: np.random.Generator
) -> pd.DataFrame:
    """Races with a finishing order drawn at random."""
    frame = pd.DataFrame(rows, columns=columns)
    frame["position"] = [
        int(p) for _ in range(len(rows) // RUNNERS) for p in rng.permutation(RUNNERS) + 1
    ]
    return frame


def _drawn_results(
    columns: list[str], rows: list[list[Any]], truth: Any, rng: np.random.Generator
) -> pd.DataFrame:
    """The races' results: each race's finishing order drawn from the truth model's win
    probabilities as captured (the winner with its probability, then the next among
    the rest in proportion, and so on), so that model is right by construction."""
    probability = {
        (g, e): p
        for g, e, p in zip(truth.group, truth.entity, truth.outputs["win_probability"], strict=True)
    }
    frame = pd.DataFrame(rows, columns=columns)
    positions = []
    for _, race in frame.groupby("race", sort=False):
        p = np.array(
            [probability[(r, h)] for r, h in zip(race["race"], race["runner"], strict=True)]
        )
        order = rng.choice(len(p), size=len(p), replace=False, p=p / p.sum())
        place = np.empty(len(p), dtype=int)
        place[order] = np.arange(1, len(p) + 1)
        positions.extend(place.tolist())
    frame["position"] = positions
    return frame


def _wait_captured(
    data: Store, dataset: str, model_id: str, rows: int, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while (found := len(read_captured(data, dataset, model_id))) < rows:
        assert time.monotonic() < deadline, f"{found} of {rows} rows of {model_id} captured"
        time.sleep(0.2)
    assert found == rows


def _settle(stack: LocalStack) -> None:
    """Ingest has announced every version, and the monitor runs it started are done."""
    assert stack.poller is not None and stack.monitor_poller is not None
    stack.poller.drain(timeout=60)
    stack.monitor_poller.drain(timeout=60)


def _primary(comparison: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in comparison["metrics"] if m["metric"] == comparison["primary_metric"])


def test_the_comparison_recommends_the_model_the_results_were_drawn_from(
    clients: dict[str, GallopClient], world: dict[str, Any]
) -> None:
    client, names = clients["local"], world["names"]
    # WHEN the monitor runs on each dataset (a person asks for a check)
    renewals = {}
    for tag in ("p", "k"):
        reply = client.check_monitoring(names[tag])
        [renewals[tag]] = reply["renewals"]
        assert renewals[tag]["dataset"] == names[tag]
    # THEN on p, whose results follow the challenger, the challenger is better on race
    # log loss with an interval clear of zero: "promote"
    assert renewals["p"]["recommendation"] == "promote"
    p = client.challenger(names["p"])
    compared = p["comparison"]
    assert (compared["champion"], compared["challenger"]) == (
        world["p"]["champion"],
        world["p"]["challenger"],
    )
    assert compared["recommendation"] == "promote"
    assert compared["races"] == RACES and compared["min_races"] == MIN_RACES
    primary = _primary(compared)
    assert primary["metric"] == "race_log_loss" and primary["races"] == RACES
    assert primary["challenger"] < primary["champion"] and primary["low"] > 0
    # AND on k, whose results follow the champion, the challenger is worse: "keep"
    assert renewals["k"]["recommendation"] == "keep"
    k = client.challenger(names["k"])["comparison"]
    assert k["recommendation"] == "keep" and k["races"] == RACES
    primary = _primary(k)
    assert primary["challenger"] > primary["champion"] and primary["high"] < 0
    # AND only p's recommendation opened an approval request: the challenger over the
    # champion, with the comparison's words
    [pending] = client.approvals(names["p"], status="PENDING")
    assert (pending["champion"], pending["challenger"]) == (
        world["p"]["champion"],
        world["p"]["challenger"],
    )
    assert pending["recommendation"] == "promote"
    assert pending["reason_for_request"] == compared["reason"]
    assert p["approval"]["approval_id"] == pending["approval_id"]
    assert client.approvals(names["p"]) == [pending]  # a second run asks no second time
    assert client.approvals(names["k"]) == []


def test_an_approver_promotes_a_request_times_out_and_a_rollback_goes_back_one_step(
    stack: LocalStack, clients: dict[str, GallopClient], world: dict[str, Any]
) -> None:
    assert stack.settings is not None
    client, name, engine = clients["local"], world["names"]["p"], world["engine"]
    first, second = world["p"]["champion"], world["p"]["challenger"]
    columns, rows = races(3, "after")
    [request] = client.approvals(name, status="PENDING")
    opened = request["approval_id"]

    # WHEN a reader key and a writer key try to approve (or roll back)
    for key, has in (("viewer", "reader"), ("ci", "reader, writer")):
        who = clients[key]
        for attempt in (
            partial(who.decide, opened, "approve"),
            partial(who.rollback, name, reason="mine"),
        ):
            with pytest.raises(ApiError) as refused:
                attempt()
            # THEN 403, naming the role needed and the key's name (never its secret)
            assert refused.value.status_code == 403
            assert refused.value.detail == (
                f"this needs the approver role: the key {key!r} has {has}"
            )
            assert stack.api_keys[key] not in json.dumps(refused.value.body)
    # AND nothing changed
    assert client.approval(opened)["status"] == "PENDING"
    assert client.aliases(name)["champion"] == first

    # WHEN an approver (the key `local`) approves
    decided = client.decide(opened, "approve", reason="better on live races")
    # THEN the challenger is the champion, no longer the challenger, and predict's
    # champion is it
    assert (decided["status"], decided["decided_by"]) == ("APPROVED", "local")
    aliases = client.aliases(name)
    assert (aliases["champion"], aliases["challenger"]) == (second, None)
    answered = client.predict("champion", dataset=name, columns=columns, data=rows)
    assert answered["model_id"] == second
    # AND approving again is a 409 that changes nothing
    with pytest.raises(ApiError) as twice:
        client.decide(opened, "approve")
    assert twice.value.status_code == 409
    assert f"approval request {opened} is already APPROVED by local" in twice.value.detail

    # GIVEN a new challenger (a writer may name one) and a request for it opened 73 hours
    # ago, which nobody decided
    third = _linear_model(
        engine,
        Store.artifacts_from_settings(stack.settings),
        repo.get_dataset(engine, name),
        BY_BOTH,
        client.versions(name)[0]["version_id"],
    )
    clients["ci"].promote(third, "challenger", reason="retrained")
    late = datetime.now(UTC) - timedelta(hours=stack.settings.approval_timeout_hours + 1)
    comparison = {"dataset": name, "champion": second, "challenger": third}
    stale = approvals.open_approval(
        engine,
        stack.settings,
        repo.get_dataset(engine, name).id,
        comparison | {"recommendation": "promote", "reason": "as if compared then"},
        now=late,
    )
    assert stale is not None
    # WHEN the monitor runs
    [renewal] = client.check_monitoring(name)["renewals"]
    # THEN the request has expired by it, the champion stays, and approving is a 409
    assert renewal["expired"] == [stale.approval_id]
    expired = client.approval(stale.approval_id)
    assert (expired["status"], expired["decided_by"]) == ("EXPIRED", "approval timeout")
    assert client.aliases(name)["champion"] == second
    with pytest.raises(ApiError) as too_late:
        client.decide(stale.approval_id, "approve")
    assert too_late.value.status_code == 409 and "already EXPIRED" in too_late.value.detail
    assert client.aliases(name)["champion"] == second

    # WHEN an approver rolls the champion back
    rolled = client.rollback(name, reason="worse on the new track")
    # THEN the first champion is back, and predict answers with it
    assert (rolled["from_model"], rolled["to_model"]) == (second, first)
    assert client.aliases(name)["champion"] == first
    answered = client.predict("champion", dataset=name, columns=columns, data=rows)
    assert answered["model_id"] == first
    # AND the first champion has nothing before it: 409, nothing changed
    with pytest.raises(ApiError) as nothing:
        client.rollback(name)
    assert nothing.value.status_code == 409
    assert "no earlier champion" in nothing.value.detail
    assert client.aliases(name)["champion"] == first

    # THEN the history says every step, newest first: who (a key's name, never its
    # secret), what, from which model to which, why, and the approval request
    lines = client.alias_history(name)
    said = [
        (x["alias"], x["action"], x["from_model"], x["to_model"], x["actor"], x["approval_id"])
        for x in lines
    ]
    assert said == [
        ("champion", "rollback", second, first, "local", None),
        ("champion", "expire", second, second, "approval timeout", stale.approval_id),
        ("challenger", "promote", None, third, "ci", None),
        ("champion", "approve", first, second, "local", opened),
        ("challenger", "approve", second, None, "local", opened),
        ("challenger", "promote", None, second, "local", None),
        ("champion", "promote", None, first, "local", None),
    ]
    reasons = [x["reason"] for x in lines]
    assert reasons[0] == "worse on the new track"
    assert stale.approval_id in reasons[1]
    assert reasons[2:] == [
        "retrained",
        "better on live races",
        "it became the champion",
        "a rival in shadow",
        "the first champion",
    ]
    text = json.dumps(lines)
    assert all(secret not in text for secret in [stack.api_key, *stack.api_keys.values()])
