"""Aliases per dataset (gallop.serving.registry) on SQLite and Postgres with moto S3:
promotion, the append-only history, rollback, the serving object, and migration 0011."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import uvicorn
from fastapi.testclient import TestClient
from moto import mock_aws
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

import gallop
from gallop.api.app import create_app
from gallop.cli import main
from gallop.layout import MANIFEST_FILE, legacy_alias_key, serving_key
from gallop.local.repair import repair
from gallop.local.stack import free_port
from gallop.metadata import repo
from gallop.metadata.db import migrate, session_scope
from gallop.metadata.models import AliasEvent, Dataset, ModelAlias
from gallop.serving import registry
from gallop.serving.registry import ModelUnreadable, NothingToRollBack
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import ObjectMissing, Store
from gallop.training import runs
from tests.conftest import registered_model, spec_named

ARTIFACTS = "artifacts"


@pytest.fixture()
def artifacts() -> Iterator[Store]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=ARTIFACTS)
        yield Store(ARTIFACTS, s3)


def dataset(engine: Engine, spec: DatasetSpec, name: str) -> Dataset:
    return repo.register_dataset(engine, spec_named(spec, name))[0]


def model(
    engine: Engine, artifacts: Store | None, of: Dataset, run_id: str, *, files: bool = True
) -> str:
    """A registered model of a run of the dataset, with the files promotion checks."""
    return registered_model(engine, of, run_id, files=artifacts if files else None)


def served(artifacts: Store, name: str) -> dict:
    return json.loads(artifacts.get_bytes(serving_key(name)))


def lines(engine: Engine, of: Dataset) -> list[tuple]:
    events, _ = registry.history(engine, of.id, None)
    return [(e.alias, e.action, e.from_model, e.to_model, e.actor, e.reason) for e in events]


def test_two_datasets_have_their_own_champions(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN two datasets with a model each
    races, letor = dataset(engine, races_spec, "races"), dataset(engine, races_spec, "letor")
    a, b = model(engine, artifacts, races, "a1" * 8), model(engine, artifacts, letor, "b1" * 8)
    # WHEN each model is promoted to champion
    assert registry.promote(engine, artifacts, a, "champion", actor="ann") is None
    assert registry.promote(engine, artifacts, b, "champion", actor="bob", reason="first") is None
    # THEN each dataset's champion is its own model, in the rows and the serving objects
    assert registry.aliases_of(engine, races.id) == {"champion": a}
    assert registry.aliases_of(engine, letor.id) == {"champion": b}
    assert served(artifacts, "races") | {"updated_at": None} == {
        "dataset": "races",
        "champion": a,
        "challenger": None,
        "traffic": {"mode": "champion", "challenger_share": 0.0, "shadow_share": 0.0},
        "updated_at": None,
    }
    assert served(artifacts, "letor")["champion"] == b
    assert registry.alias_names(engine) == {a: ["champion"], b: ["champion"]}
    # AND each move is one line of its own dataset's history, naming who and why
    assert lines(engine, letor) == [("champion", "promote", None, b, "bob", "first")]
    # WHEN a second model of races becomes champion THEN letor's is untouched
    a2 = model(engine, artifacts, races, "a2" * 8)
    assert registry.promote(engine, artifacts, a2, "champion", actor="ann") == a
    assert registry.aliases_of(engine, letor.id) == {"champion": b}
    assert served(artifacts, "letor")["champion"] == b
    assert lines(engine, races)[0] == ("champion", "promote", a, a2, "ann", None)


def test_a_model_whose_files_are_gone_is_not_promoted_and_nothing_changes(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races = dataset(engine, races_spec, "races")
    lost = model(engine, artifacts, races, "c1" * 8, files=False)
    with pytest.raises(ModelUnreadable, match="model.onnx is gone"):
        registry.promote(engine, artifacts, lost, "challenger", actor="ann")
    assert registry.aliases_of(engine, races.id) == {}
    assert lines(engine, races) == []
    with pytest.raises(ObjectMissing):
        artifacts.head(serving_key("races"))
    with pytest.raises(registry.ModelNotFound):
        registry.promote(engine, artifacts, "m-" + "0" * 16, "champion", actor="ann")
    with pytest.raises(ValueError, match="champion, challenger"):
        registry.promote(engine, artifacts, lost, "king", actor="ann")


def test_a_promotion_in_the_callers_transaction_is_undone_with_it(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN a champion
    races = dataset(engine, races_spec, "races")
    first = model(engine, artifacts, races, "d1" * 8)
    second = model(engine, artifacts, races, "d2" * 8)
    registry.promote(engine, artifacts, first, "champion", actor="ann")
    # WHEN a promotion inside a caller's transaction (as approving one is) fails after it
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        previous = registry.promote(
            engine, artifacts, second, "champion", actor="cat", action="approve", session=session
        )
        assert previous == first
        raise RuntimeError("the approval could not be recorded")
    # THEN neither the alias nor its history moved
    assert registry.aliases_of(engine, races.id) == {"champion": first}
    assert [line[1] for line in lines(engine, races)] == ["promote"]


def test_rollback_walks_the_champions_back_and_stops_at_the_first(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN three champions in turn, and a challenger (which rollback leaves alone)
    races = dataset(engine, races_spec, "races")
    a, b, c = (model(engine, artifacts, races, f"e{i}" * 8) for i in range(1, 4))
    for m in (a, b, c):
        registry.promote(engine, artifacts, m, "champion", actor="ann")
    registry.promote(engine, artifacts, c, "champion", actor="ann")  # again: not a new step
    registry.promote(engine, artifacts, a, "challenger", actor="ann")
    # WHEN it is rolled back THEN the champion goes back one step each time
    assert registry.rollback(engine, artifacts, races.id, actor="bob", reason="worse") == (c, b)
    assert served(artifacts, "races")["champion"] == b
    assert registry.rollback(engine, artifacts, races.id, actor="bob") == (b, a)
    assert registry.aliases_of(engine, races.id) == {"champion": a, "challenger": a}
    # AND at the first there is nothing earlier, and nothing changes
    with pytest.raises(NothingToRollBack, match="no earlier champion"):
        registry.rollback(engine, artifacts, races.id, actor="bob")
    assert lines(engine, races)[:2] == [
        ("champion", "rollback", b, a, "bob", None),
        ("champion", "rollback", c, b, "bob", "worse"),
    ]
    # WHEN a new champion comes after a rollback THEN rolling back returns to the one before
    registry.promote(engine, artifacts, c, "champion", actor="ann")
    assert registry.rollback(engine, artifacts, races.id, actor="bob") == (c, a)


def test_rollback_with_no_champion_before_is_refused(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races = dataset(engine, races_spec, "races")
    with pytest.raises(NothingToRollBack):
        registry.rollback(engine, artifacts, races.id, actor="bob")
    only = model(engine, artifacts, races, "f1" * 8)
    registry.promote(engine, artifacts, only, "champion", actor="ann")
    with pytest.raises(NothingToRollBack):
        registry.rollback(engine, artifacts, races.id, actor="bob")
    assert len(lines(engine, races)) == 1


def test_a_model_unregistered_leaves_its_aliases_and_cannot_be_rolled_back_to(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN a champion before the current one, whose files are then lost
    races = dataset(engine, races_spec, "races")
    old, new = model(engine, artifacts, races, "a3" * 8), model(engine, artifacts, races, "a4" * 8)
    registry.promote(engine, artifacts, old, "champion", actor="ann")
    registry.promote(engine, artifacts, old, "challenger", actor="ann")
    registry.promote(engine, artifacts, new, "champion", actor="ann")
    # WHEN the old model is unregistered (as the local stack's repair does)
    runs.unregister_model(engine, artifacts, "a3" * 8, "its files were lost")
    # THEN the challenger names nothing, with a history line, and the object says so
    assert registry.aliases_of(engine, races.id) == {"champion": new}
    assert lines(engine, races)[0] == (
        "challenger",
        "unregister",
        old,
        None,
        runs.REPAIR,
        "its files were lost",
    )
    assert served(artifacts, "races")["challenger"] is None
    assert runs.get_run(engine, "a3" * 8).status == "FAILED"
    # AND the champion cannot go back to it
    with pytest.raises(NothingToRollBack):
        registry.rollback(engine, artifacts, races.id, actor="bob")


def test_the_local_stacks_repair_unregisters_a_champion_whose_files_are_lost(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN a champion whose files are then lost
    races = dataset(engine, races_spec, "races")
    champion = model(engine, artifacts, races, "a5" * 8)
    registry.promote(engine, artifacts, champion, "champion", actor="ann")
    artifacts.delete(registry.model_prefix(champion) + MANIFEST_FILE)
    # WHEN the local stack repairs itself at its start
    assert repair(engine, artifacts, artifacts, lambda request: None).models_unregistered == 1
    # THEN the dataset has no champion, its history and serving object say so
    assert registry.aliases_of(engine, races.id) == {}
    action, lost = lines(engine, races)[0][1:3]
    assert (action, lost) == ("unregister", champion)
    assert served(artifacts, "races")["champion"] is None


def test_history_comes_in_pages_newest_first(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races = dataset(engine, races_spec, "races")
    a, b = model(engine, artifacts, races, "b2" * 8), model(engine, artifacts, races, "b3" * 8)
    for m in (a, b, a):
        registry.promote(engine, artifacts, m, "champion", actor="ann")
    first, cursor = registry.history(engine, races.id, 2)
    assert [e.to_model for e in first] == [a, b] and cursor
    rest, end = registry.history(engine, races.id, 2, cursor)
    assert [(e.from_model, e.to_model) for e in rest] == [(None, a)] and end is None


def test_publish_all_writes_every_dataset_and_removes_the_global_alias_objects(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races, empty = dataset(engine, races_spec, "races"), dataset(engine, races_spec, "empty")
    a = model(engine, artifacts, races, "b4" * 8)
    registry.promote(engine, artifacts, a, "challenger", actor="ann")
    artifacts.delete(serving_key("races"))
    for alias in registry.ALIASES:
        artifacts.put_json(legacy_alias_key(alias), {"alias": alias, "model_id": a})
    for _ in range(2):  # idempotent
        registry.publish_all(engine, artifacts)
        assert served(artifacts, "races")["challenger"] == a
        assert served(artifacts, empty.name)["champion"] is None
        for alias in registry.ALIASES:
            with pytest.raises(ObjectMissing):
                artifacts.head(legacy_alias_key(alias))


def test_the_alias_history_refuses_changes(engine: Engine, races_spec: DatasetSpec) -> None:
    # GIVEN a history line
    races = dataset(engine, races_spec, "races")
    with session_scope(engine) as session:
        registry.record_event(session, races.id, "champion", "reject", actor="ann", reason="no")
    # WHEN it is changed or removed THEN the database refuses
    for change in ("UPDATE alias_events SET actor = 'mallory'", "DELETE FROM alias_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(change))
    assert lines(engine, races) == [("champion", "reject", None, None, "ann", "no")]


def test_migration_0011_moves_the_global_aliases_onto_their_datasets(
    engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN a database of the schema before 0011, with a champion and a challenger of the
    # installation, of two datasets
    migrate(engine, "0010", down=True)
    races, letor = dataset(engine, races_spec, "races"), dataset(engine, races_spec, "letor")
    a, b = model(engine, None, races, "c2" * 8), model(engine, None, letor, "c3" * 8)
    with engine.begin() as connection:
        for alias, model_id in (("champion", a), ("challenger", b)):
            connection.execute(
                text(
                    "INSERT INTO model_aliases (alias, model_id, updated_at) "
                    "VALUES (:alias, :model_id, CURRENT_TIMESTAMP)"
                ),
                {"alias": alias, "model_id": model_id},
            )
    # WHEN it is migrated, and the serving objects are written (the migrate function)
    migrate(engine)
    registry.publish_all(engine, artifacts)
    # THEN each alias is on its model's dataset, with a history line saying so
    assert registry.aliases_of(engine, races.id) == {"champion": a}
    assert registry.aliases_of(engine, letor.id) == {"challenger": b}
    assert [line[:5] for line in lines(engine, races)] == [
        ("champion", "migrate", None, a, "migration 0011")
    ]
    assert "the installation's challenger" in lines(engine, letor)[0][5]
    assert served(artifacts, "races")["champion"] == a
    assert served(artifacts, "letor")["challenger"] == b
    with session_scope(engine) as session:
        assert len(session.scalars(select(ModelAlias)).all()) == 2
        assert len(session.scalars(select(AliasEvent)).all()) == 2


# -- the routes, through the real app (and the SDK over it) ---------------------------------

KEY = "test-key-123"
OPS_KEY = f"ops:reader+writer+approver:{KEY}"  # the history names it: ops


@pytest.fixture()
def api(engine: Engine, artifacts: Store, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        state_dir=tmp_path,
        api_keys=OPS_KEY,
        artifacts_bucket=ARTIFACTS,
        database_url=engine.url.render_as_string(hide_password=False),
    )
    app = create_app(settings, engine=engine, artifacts=artifacts, serve_predictions=False)
    with TestClient(app, headers={"x-api-key": KEY}) as client:
        yield client


def test_promote_history_and_rollback_through_the_api(
    api: TestClient, engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN two datasets, races with two models and letor with one
    races, letor = dataset(engine, races_spec, "races"), dataset(engine, races_spec, "letor")
    a, b = model(engine, artifacts, races, "d3" * 8), model(engine, artifacts, races, "d4" * 8)
    other = model(engine, artifacts, letor, "d5" * 8)
    # WHEN a and then b are promoted, with a reason, and letor's model too
    first = api.post(f"/v1/models/{a}/promote", json={"alias": "champion"})
    assert first.status_code == 200, first.text
    assert first.json() == {
        "alias": "champion",
        "dataset": "races",
        "model_id": a,
        "previous": None,
    }
    reply = api.post(f"/v1/models/{b}/promote", json={"alias": "champion", "reason": "better"})
    assert reply.json()["previous"] == a
    api.post(f"/v1/models/{other}/promote", json={"alias": "champion"})
    # THEN each dataset names its own champion, and the models list their aliases
    assert api.get("/v1/datasets/races/aliases").json() | {"traffic": None} == {
        "dataset": "races",
        "champion": b,
        "challenger": None,
        "traffic": None,
    }
    assert api.get("/v1/datasets/letor/aliases").json()["champion"] == other
    # AND a model of letor cannot become races' champion: 422, nothing changed
    crossed = api.post(
        f"/v1/models/{other}/promote", json={"alias": "champion", "dataset": "races"}
    )
    assert crossed.status_code == 422
    assert crossed.json()["detail"] == (
        f"model {other} is dataset 'letor''s: it cannot be 'races''s alias (an alias names "
        "a model of its own dataset); nothing changed"
    )
    assert served(artifacts, "races")["champion"] == b
    listed = {m["model_id"]: m["aliases"] for m in api.get("/v1/models").json()["items"]}
    assert listed == {a: [], b: ["champion"], other: ["champion"]}
    # AND the history, newest first, in pages, says who: the key's name, never the key
    page = api.get("/v1/datasets/races/aliases/history", params={"limit": 1}).json()
    assert [(i["from_model"], i["to_model"], i["actor"], i["reason"]) for i in page["items"]] == [
        (a, b, "ops", "better")
    ]
    rest = api.get("/v1/datasets/races/aliases/history", params={"cursor": page["next_cursor"]})
    assert [i["to_model"] for i in rest.json()["items"]] == [a]
    # WHEN the champion is rolled back THEN it is a again, and once more is a 409
    back = api.post("/v1/datasets/races/aliases/champion/rollback", json={"reason": "drifted"})
    assert back.status_code == 200, back.text
    assert back.json() == {"dataset": "races", "alias": "champion", "from_model": b, "to_model": a}
    assert served(artifacts, "races")["champion"] == a
    again = api.post("/v1/datasets/races/aliases/champion/rollback")
    assert again.status_code == 409 and "no earlier champion" in again.json()["detail"]
    assert api.get("/v1/datasets/letor/aliases").json()["champion"] == other
    # AND unknown datasets are 404s
    assert api.get("/v1/datasets/nope/aliases").status_code == 404
    assert api.post("/v1/datasets/nope/aliases/champion/rollback").status_code == 404


def test_a_promotion_with_a_reason_past_its_limit_is_refused(
    api: TestClient, engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races = dataset(engine, races_spec, "races")
    a = model(engine, artifacts, races, "d6" * 8)
    reply = api.post(f"/v1/models/{a}/promote", json={"alias": "champion", "reason": "x" * 1001})
    assert reply.status_code == 422 and "body.reason" in reply.json()["detail"]
    assert registry.aliases_of(engine, races.id) == {}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"mode": "split", "shares": {"champion": 0.95, "challenger": 0.02}},
            "shares",
            "shares add up to 0.97, not 1",
        ),
        ({"mode": "split", "challenger_share": 1.0}, "challenger_share", "between 0 and 1"),
        ({"mode": "split", "challenger_share": -0.1}, "challenger_share", "not -0.1"),
        ({"mode": "shadow", "shadow_share": 1.5}, "shadow_share", "from 0 to 1, not 1.5"),
        ({"mode": "half"}, "mode", "champion, shadow, split, not 'half'"),
        ({"mode": "shadow", "challenger_share": 0.1}, "challenger_share", "answers no request"),
        ({"mode": "split", "shares": {"champion": 1.0}}, "shares", "champion and challenger"),
    ],
)
def test_a_traffic_policy_that_does_not_add_up_is_a_422_and_changes_nothing(
    api: TestClient, engine: Engine, races_spec: DatasetSpec, body: dict, field: str, message: str
) -> None:
    dataset(engine, races_spec, "races")
    reply = api.put("/v1/datasets/races/traffic", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["errors"][0]["loc"] == ["body", field]
    assert message in reply.json()["detail"]
    assert api.get("/v1/datasets/races/traffic").json()["mode"] == "champion"


def test_a_traffic_policy_is_served_with_the_aliases(
    api: TestClient, engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    # GIVEN a dataset with a champion and no challenger yet
    races = dataset(engine, races_spec, "races")
    a, b = model(engine, artifacts, races, "e4" * 8), model(engine, artifacts, races, "e5" * 8)
    api.post(f"/v1/models/{a}/promote", json={"alias": "champion"})
    # WHEN a 95/5 split is set
    shares = {"champion": 0.95, "challenger": 0.05}
    reply = api.put("/v1/datasets/races/traffic", json={"mode": "split", "shares": shares})
    assert reply.status_code == 200, reply.text
    assert reply.json() | {"updated_at": None} == {
        "mode": "split",
        "challenger_share": 0.05,
        "shadow_share": 0.0,
        "updated_by": "ops",
        "updated_at": None,
    }
    # THEN with no challenger it is served as champion; once there is one, as a split
    assert served(artifacts, "races")["traffic"]["mode"] == "champion"
    api.post(f"/v1/models/{b}/promote", json={"alias": "challenger"})
    assert served(artifacts, "races")["traffic"] == {
        "mode": "split",
        "challenger_share": 0.05,
        "shadow_share": 0.0,
    }
    # AND a shadow policy shadows every race unless told otherwise
    api.put("/v1/datasets/races/traffic", json={"mode": "shadow"})
    assert served(artifacts, "races")["traffic"]["shadow_share"] == 1.0
    assert api.get("/v1/datasets/races/aliases").json()["traffic"]["mode"] == "shadow"
    assert api.put("/v1/datasets/nope/traffic", json={"mode": "champion"}).status_code == 404


def test_a_retraining_policy_is_stored_and_read_back(
    api: TestClient, engine: Engine, races_spec: DatasetSpec
) -> None:
    dataset(engine, races_spec, "races")
    never = api.get("/v1/datasets/races/retraining").json()
    assert never["every_hours"] is None and never["on_alarm"] is False
    assert never["updated_by"] is None and never["last_outcome"] is None
    policy = {"every_hours": 24, "after_rows": 5000, "on_alarm": True, "time_limit": 600}
    reply = api.put("/v1/datasets/races/retraining", json=policy)
    assert reply.status_code == 200, reply.text
    got = api.get("/v1/datasets/races/retraining").json()
    assert {k: got[k] for k in policy} == policy
    assert got["auto_promote"] is False and got["updated_by"] == "ops"
    assert got["last_trigger"] is None
    for bad, field in (({"every_hours": 0}, "every_hours"), ({"time_limit": 10**9}, "time_limit")):
        refused = api.put("/v1/datasets/races/retraining", json=bad)
        assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["body", field]
    assert api.get("/v1/datasets/races/retraining").json()["after_rows"] == 5000


def test_the_sdk_reaches_the_aliases_and_policies(
    api: TestClient, engine: Engine, artifacts: Store, races_spec: DatasetSpec
) -> None:
    races = dataset(engine, races_spec, "races")
    a, b = model(engine, artifacts, races, "f2" * 8), model(engine, artifacts, races, "f3" * 8)
    # the SDK's HTTP client over the test app's transport: the real routes, no server
    with gallop.Client("http://testserver", KEY, transport=api._transport) as client:
        client.promote(a, reason="first")
        assert client.promote(b, "champion", "second")["previous"] == a
        assert client.aliases("races")["champion"] == b
        assert list(client.alias_history("races")["reason"]) == ["second", "first"]
        assert client.rollback("races", "back")["to_model"] == a
        assert client.put_traffic_policy("races", "split", challenger_share=0.1)["mode"] == "split"
        assert client.traffic_policy("races")["challenger_share"] == 0.1
        client.put_retraining_policy("races", on_alarm=True)
        assert client.retraining_policy("races")["on_alarm"] is True


def test_the_cli_promotes_shows_rolls_back_and_sets_policies(
    engine: Engine,
    artifacts: Store,
    races_spec: DatasetSpec,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the app served over HTTP (as gallop serve serves it), a dataset with two models
    races = dataset(engine, races_spec, "races")
    a, b = model(engine, artifacts, races, "f4" * 8), model(engine, artifacts, races, "f5" * 8)
    settings = Settings(state_dir=tmp_path, api_keys=OPS_KEY, artifacts_bucket=ARTIFACTS)
    app = create_app(settings, engine=engine, artifacts=artifacts, serve_predictions=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    api = ["--api", f"http://127.0.0.1:{port}", "--api-key", KEY]

    def gallop(*args: str) -> str:
        assert main([*args, *api]) == 0
        return capsys.readouterr().out

    try:
        # WHEN the models are promoted with reasons, and the champion rolled back
        gallop("models", "promote", a, "--reason", "first")
        assert "races champion" in gallop("models", "promote", b, "--reason", "second")
        assert f"races champion → {a} (before: {b})" in gallop(
            "aliases", "rollback", "--dataset", "races", "--reason", "worse"
        )
        # THEN the aliases and their history say so
        shown = gallop("aliases")
        assert "races" in shown and a in shown and "champion" in shown
        history = json.loads(gallop("aliases", "history", "--dataset", "races", "--json"))
        assert [line["reason"] for line in history] == ["worse", "second", "first"]
        # AND the policies are set and shown; a bad one is refused, saying why
        gallop("traffic", "set", "--dataset", "races", "--mode", "shadow", "--shadow-share", ".5")
        assert "shadow_share: 0.5" in gallop("traffic", "--dataset", "races")
        policy = gallop("retraining", "set", "--dataset", "races", "--on-alarm", "--json")
        assert json.loads(policy)["on_alarm"] is True
        assert "on_alarm: True" in gallop("retraining", "show", "--dataset", "races")
        bad = ["traffic", "set", "--dataset", "races", "--mode", "split"]
        assert main([*bad, "--challenger-share", "1.5", *api]) == 1
        assert "between 0 and 1" in capsys.readouterr().err
        assert main(["aliases", "history", *api]) == 2
        assert "needs --dataset" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(timeout=10)
