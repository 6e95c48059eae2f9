"""Routing a champion request under a traffic policy: which model answers each race, which
races the other model scores in shadow, and what a serving object must hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gallop.monitoring.capture import sampled
from gallop.serving.cache import Serving, Target, Traffic
from gallop.serving.predict import InputError
from gallop.serving.registry import ModelUnreadable
from gallop.serving.traffic import SHADOW_SALT, SPLIT_SALT, _by_rows, race_keys, route
from tests.unit.test_capture import ranker

RACES = [f"race-{i}" for i in range(10_000)]


def rows_of(races: list[str], runners: int = 3) -> list[str]:
    """Each race's key once per runner, races interleaved (a request need not keep a
    race's rows together)."""
    return [race for _ in range(runners) for race in races]


def test_a_split_sends_its_share_of_races_and_every_runner_of_a_race_to_one_model() -> None:
    keys = rows_of(RACES)
    plan = route(Traffic("split", 0.05, 0.0), keys)
    # every row answered once, by one of two parts, in row order, the first row's first
    assert sorted(i for p in plan.answered for i in p.rows) == list(range(len(keys)))
    assert all(p.rows == sorted(p.rows) for p in plan.answered)
    assert plan.answered[0].rows[0] == 0 and plan.shadowed == []
    challenger = {keys[i] for p in plan.answered if not p.champion for i in p.rows}
    champion = {keys[i] for p in plan.answered if p.champion for i in p.rows}
    assert not challenger & champion  # a race is never split between models
    assert abs(len(challenger) / len(RACES) - 0.05) < 0.02
    # the same races every time, and the hash's choice (its own salt)
    assert route(Traffic("split", 0.05, 0.0), keys) == plan
    assert challenger == {r for r in RACES if sampled(r, 0.05, SPLIT_SALT)}


def test_the_split_shadow_and_capture_sample_pick_independently() -> None:
    # crc32 of a prefixed key is the key's crc32 XOR a constant: a 5 % split would fall
    # all inside (or outside) capture's 50 % sample. The salted hash must not.
    split = [r for r in RACES if sampled(r, 0.05, SPLIT_SALT)]
    captured = [r for r in split if sampled(r, 0.5)]
    assert 0.4 < len(captured) / len(split) < 0.6
    shadowed = [r for r in split if sampled(r, 0.5, SHADOW_SALT)]
    assert 0.4 < len(shadowed) / len(split) < 0.6
    assert sampled("r", 0.5) == sampled("r", 0.5, b"")  # capture's own choice is unchanged


def test_under_shadow_the_champion_answers_and_the_challenger_scores_its_share() -> None:
    keys = rows_of(RACES[:2000])
    plan = route(Traffic("shadow", 0.0, 0.25), keys)
    assert [(p.champion, len(p.rows)) for p in plan.answered] == [(True, len(keys))]
    (shadow,) = plan.shadowed
    assert not shadow.champion
    races = {keys[i] for i in shadow.rows}
    assert races == {r for r in RACES[:2000] if sampled(r, 0.25, SHADOW_SALT)}
    assert len(shadow.rows) == 3 * len(races)  # whole races
    assert route(Traffic("shadow", 0.0, 0.0), keys).shadowed == []


def test_under_a_split_with_full_shadow_each_race_is_scored_by_the_other_model_too() -> None:
    keys = rows_of(RACES[:500])
    plan = route(Traffic("split", 0.3, 1.0), keys)
    answered = {(p.champion, i) for p in plan.answered for i in p.rows}
    shadowed = {(not p.champion, i) for p in plan.shadowed for i in p.rows}
    assert answered == shadowed  # the other model of every row


@pytest.mark.parametrize(
    "policy",
    [
        Traffic("champion", 0.0, 0.0),
        Traffic("shadow", 0.0, 0.3),
        Traffic("split", 0.3, 0.0),
        Traffic("split", 0.3, 1.0),
        Traffic("split", 1.0, 0.5),
    ],
)
def test_a_request_of_one_race_is_routed_as_its_rows_would_be(policy: Traffic) -> None:
    # The one-race shortcut (a race card) and the row by row route agree on every race
    for race in RACES[:400]:
        assert route(policy, [race] * 12) == _by_rows(policy, [race] * 12), race


def test_race_keys_are_the_group_else_the_entity_else_the_request() -> None:
    model = ranker()
    columns = ["race", "runner", "x0", "going"]
    values = [[1001.0, "h1", 1.0, "firm"], ["r2", "h2", 0.5, None]]
    assert race_keys(model, columns, values, "req") == ["1001", "r2"]  # as results name it
    # no group column: one key, the request's (scoring refuses the rows, naming it)
    assert race_keys(model, columns[1:], [v[1:] for v in values], "req") == ["req", "req"]
    with pytest.raises(InputError, match="row 2: the group id"):
        race_keys(model, columns, [values[0], [None, "h2", 0.5, None]], "req")
    ungrouped = ranker()
    ungrouped.manifest = {**ungrouped.manifest, "group": None, "identifiers": ["runner"]}
    assert race_keys(ungrouped, columns, values, "req") == ["h1", "h2"]
    assert race_keys(ungrouped, columns, [values[0], ["r2", None, 0.5, None]], "req") == [
        "h1",
        "req",
    ]
    ungrouped.manifest = {**ungrouped.manifest, "identifiers": []}
    assert race_keys(ungrouped, columns, values, "req") == ["req", "req"]


def serving(**changes: Any) -> bytes:
    found: dict[str, Any] = {
        "dataset": "races",
        "champion": "m-0123456789abcdef",
        "challenger": "m-fedcba9876543210",
        "traffic": {"mode": "split", "challenger_share": 0.05, "shadow_share": 1.0},
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    return json.dumps(found | changes).encode()


def test_a_serving_object_is_read_as_the_registry_writes_it() -> None:
    read = Serving.parse(serving(), "k")
    assert read.policy == Traffic("split", 0.05, 1.0)
    assert read.named("champion") == "m-0123456789abcdef"
    # no traffic policy: champion; a policy that needs a challenger, without one: champion
    assert Serving.parse(serving(traffic=None), "k").policy == Traffic()
    assert Serving.parse(serving(challenger=None), "k").policy == Traffic()
    model = ranker()
    # only a request for the champion is routed
    assert Target(model, "champion", read).policy == Traffic("split", 0.05, 1.0)
    assert Target(model, "challenger", read).policy == Traffic()
    assert Target(model).policy == Traffic()


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[]",
        serving(dataset=None),
        serving(champion=7),
        serving(traffic={"mode": "half"}),
        serving(traffic={"mode": "split", "challenger_share": 1.5}),
        serving(traffic={"mode": "split", "shadow_share": "all"}),
    ],
)
def test_a_serving_object_that_is_not_what_the_registry_writes_is_unreadable(bad: bytes) -> None:
    with pytest.raises(ModelUnreadable, match="aliases/races/serving.json"):
        Serving.parse(bad, "aliases/races/serving.json")
