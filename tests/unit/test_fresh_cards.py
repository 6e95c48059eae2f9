"""Fresh cards: the online pointer names the newest READY entity snapshot of a dataset; a
race card is completed from it (or, pinned, from the snapshot the model was trained on),
says which in `features_as_of`, is refused (409) when its race is not after that
snapshot's newest race, and codes its categories with the model's vocabularies.

S3 is moto's (mock_aws), the metadata a migrated database; the features are built by the
features service itself, and the model is a linear stack published as training does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import numpy as np
import orjson
import pandas as pd
import pytest
from moto import mock_aws
from sqlalchemy import Engine

from gallop import aws
from gallop.api.serving import answer
from gallop.features.online import CardBeforeSnapshot, card_features
from gallop.features.pointer import (
    PointerUnreadable,
    iso_time,
    micros_of,
    publish,
    read_pointer,
)
from gallop.features.service import FeaturesRequest, build_for_version
from gallop.features.state import State, cached_snapshots
from gallop.ingest.canonical import to_parquet
from gallop.layout import (
    DATA_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    REPORT_FILE,
    curated_prefix,
    explain_file,
    online_snapshot_key,
)
from gallop.metadata import repo
from gallop.metadata.models import FeatureStatus
from gallop.models.linear import LinearModel
from gallop.models.onnx_export import stack_to_onnx
from gallop.serving.cache import PointerCache
from gallop.serving.model import LoadedModel
from gallop.serving.predict import predict_body
from gallop.settings import Settings
from gallop.spec import DatasetSpec
from gallop.storage import Store
from gallop.synth.races import generate_races
from gallop.training.artifacts import publish_model_dir
from tests.conftest import spec_named, unique_name
from tests.unit.test_features import canonical, card_of

DATA, ARTIFACTS = "gallop-data-fresh", "gallop-artifacts-fresh"
KEY = "fresh-cards-key"
RUN_ID = "0123456789abcdef0c0c"
MODEL_ID = f"m-{RUN_ID}"
NEW_JOCKEY = "A-000"  # a jockey v1 never saw


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("GALLOP_AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        client = boto3.client("s3")
        for bucket in (DATA, ARTIFACTS):
            client.create_bucket(Bucket=bucket)
        yield client
    aws.reset_clients()


class Races:
    """Generated races cut in time: v1 (the history a model is trained on), v2 (v1 plus
    later races, one ridden by a jockey v1 never saw), a race between the two ends, and a
    card after both."""

    def __init__(self, spec: DatasetSpec) -> None:
        runners, _ = generate_races(130, seed=41)
        times = sorted(pd.to_datetime(runners["race_time"]).unique())
        at = pd.to_datetime(runners["race_time"])
        self.card_rows = runners[at == times[-1]]
        self.between = runners[at == times[100]]
        later = (at > times[95]) & (at < times[-1])
        runners.loc[later & (runners["jockey_id"] == runners["jockey_id"].iloc[0]), "jockey_id"] = (
            NEW_JOCKEY
        )
        self.runners = runners
        self.v1 = canonical(runners[at <= times[95]], spec)
        self.v2 = canonical(runners[at < times[-1]], spec)
        self.everything = canonical(runners, spec)
        self.v1_end, self.v2_end = times[95], times[-2]


@pytest.fixture(scope="module")
def races(races_spec: DatasetSpec) -> Races:
    return Races(races_spec)


def add_version(
    engine: Engine, store: Store, spec: DatasetSpec, version_id: str, data: pd.DataFrame
) -> None:
    """A VALID version of the dataset with its canonical data, report and manifest in the
    bucket (all a restarted local stack checks are there)."""
    dataset = repo.get_dataset(engine, spec.name)
    prefix = curated_prefix(spec.name, version_id)
    data_key = prefix + DATA_FILE
    store.put_bytes(data_key, to_parquet(data), "application/vnd.apache.parquet")
    store.put_json(prefix + REPORT_FILE, {"errors": [], "warnings": []})
    store.put_json(prefix + MANIFEST_FILE, {"version_id": version_id})
    repo.record_version(
        engine,
        dataset,
        f"u-{version_id}",
        "etag",
        version_id=version_id,
        status="VALID",
        content_hash=version_id,
        source_key=f"raw/{version_id}",
        data_key=data_key,
        report_key=prefix + REPORT_FILE,
        report={"errors": [], "warnings": []},
    )


def build(engine: Engine, store: Store, spec: DatasetSpec, version_id: str) -> Any:
    return build_for_version(FeaturesRequest(spec.name, version_id), store, engine)


def linear_model(folder: Path, spec: DatasetSpec, version_id: str, feature_manifest: Any) -> Path:
    """A ranking model of one linear base over the feature set's features, its manifest
    as training writes one (dataset, version, feature spec, categories)."""
    features = feature_manifest["features"]
    n = len(features)
    coef = np.random.default_rng(4).normal(0, 0.05, n)
    for name in feature_manifest["categorical"]:  # the jockey's code must matter
        coef[features.index(name)] = 0.3
    wide = np.full(n, 3e38)
    line = LinearModel(np.zeros(n), np.ones(n), coef, 0.0, -wide, wide)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ONNX_FILE).write_bytes(stack_to_onnx([line], [1.0], 0.0, n).SerializeToString())
    (folder / explain_file(0)).write_text(json.dumps(line.explanation()))
    manifest = {
        "task": "ranking",
        "features": features,
        "categorical": feature_manifest["categorical"],
        "group": spec.group,
        "identifiers": feature_manifest["identifiers"],
        "onnx_input": "features",
        "onnx_outputs": ["score", "margins"],
        "dataset": spec.name,
        "data_version": version_id,
        "feature_spec_hash": feature_manifest["spec_hash"],
        "run_id": RUN_ID,
        "base_models": [
            {"model": "linear", "weight": 1.0, "kind": "linear", "explain": explain_file(0)}
        ],
        "meta": {"bias": 0.0},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


class World(SimpleNamespace):
    engine: Engine
    store: Store
    spec: DatasetSpec
    state: Any
    model: LoadedModel


@pytest.fixture()
def world(s3: Any, engine: Engine, races: Races, races_spec: DatasetSpec, tmp_path: Path) -> World:
    """v1 READY (the pointer names it), a model trained on it, and an app's state as the
    predict function has it (pointers read afresh on every request: TTL 0)."""
    spec = spec_named(races_spec, unique_name("fresh"))
    repo.register_dataset(engine, spec)
    store = Store(DATA, s3)
    add_version(engine, store, spec, "v-1", races.v1)
    ready = build(engine, store, spec, "v-1")
    assert ready.status == FeatureStatus.READY.value
    feature_manifest = orjson.loads(store.get_bytes(ready.manifest_key))
    folder = linear_model(tmp_path / "model", spec, "v-1", feature_manifest)
    publish_model_dir(Store(ARTIFACTS, s3), RUN_ID, folder)
    settings = Settings(
        database_url="sqlite://",
        api_keys=KEY,
        api_key_source="settings",
        data_bucket=DATA,
        artifacts_bucket=ARTIFACTS,
        alias_ttl_seconds=0,
    )
    state = SimpleNamespace(
        settings=settings, store=lambda: store, artifacts=lambda: Store(ARTIFACTS, s3)
    )
    state.snapshots = cached_snapshots(store.get_bytes)
    return World(
        engine=engine, store=store, spec=spec, state=state, model=LoadedModel.from_dir(folder)
    )


def ask(world: World, body: dict[str, Any], explain: bool = False) -> tuple[int, Any]:
    status, payload = answer(world.state, KEY, None, orjson.dumps(body), explain)
    return status, orjson.loads(payload)


def card_body(rows: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "rows": card_of(rows), **extra}


def iso(moment: Any) -> str:
    stamp = pd.Timestamp(moment)
    return (stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")).isoformat()


def offline_scores(world: World, history: pd.DataFrame, race: pd.DataFrame) -> list[float]:
    """The model's scores on the offline features of `history` plus the race, the race's
    categories sent as their text (as feature rows are)."""
    from gallop.features.build import build_features

    built = build_features(pd.concat([history, canonical(race, world.spec)]), world.spec)
    keyed = built.frame.set_index(["race_id", "horse_id"], drop=False)
    order = list(zip(race["race_id"].astype(str), race["horse_id"].astype(str), strict=True))
    rows = []
    for record in keyed.loc[order].to_dict("records"):
        row: dict[str, Any] = {}
        for name in world.model.features:
            value = record[name]
            if name in built.manifest["categorical"]:
                value = None if np.isnan(value) else built.manifest["categorical"][name][int(value)]
            else:
                value = None if np.isnan(value) else float(value)
            row[name] = value
        rows.append(row | {"race_id": record["race_id"]})
    reply = predict_body(world.model, {"rows": rows})
    return [p["score"] for p in reply["predictions"]]


# -- the pointer ---------------------------------------------------------------------------


def test_publishing_names_the_newest_ready_snapshot(world: World, races: Races) -> None:
    engine, store, spec = world.engine, world.store, world.spec
    # GIVEN v1 READY: the features service published it
    first = read_pointer(store, spec.name, spec.spec_hash)
    assert first is not None and first.version_id == "v-1"
    assert first.state_key.endswith("state.npz") and first.dataset == spec.name
    assert first.data_end == iso(races.v1_end)
    assert first.data_end_us == micros_of(first.data_end) and iso_time(first.data_end_us) == (
        first.data_end
    )
    # WHEN v2's features are READY THEN the pointer names v2
    add_version(engine, store, spec, "v-2", races.v2)
    assert build(engine, store, spec, "v-2").status == FeatureStatus.READY.value
    second = read_pointer(store, spec.name, spec.spec_hash)
    assert second is not None and second.version_id == "v-2"
    assert second.data_end == iso(races.v2_end)
    # AND a newer version whose features FAILED does not move it
    dataset = repo.get_dataset(engine, spec.name)
    add_version(engine, store, spec, "v-3", races.v2)
    repo.record_feature_set(
        engine, dataset, version_id="v-3", spec_hash=spec.spec_hash, status="FAILED", reason="x"
    )
    assert publish(store, engine, spec.name, spec.spec_hash) == second
    # AND a pointer left stale (or lost) is put right when the same request comes again
    key = online_snapshot_key(spec.name, spec.spec_hash)
    store.put_json(key, first.to_json())
    assert build(engine, store, spec, "v-2").version_id == "v-2"  # the existing READY set
    assert read_pointer(store, spec.name, spec.spec_hash) == second
    store.delete(key)
    build(engine, store, spec, "v-1")  # an older version's request names the newest too
    assert read_pointer(store, spec.name, spec.spec_hash) == second
    # AND another spec's pointer is its own: none yet, and publishing it writes nothing
    assert read_pointer(store, spec.name, "0" * 64) is None
    assert publish(store, engine, spec.name, "0" * 64) is None
    assert read_pointer(store, spec.name, "0" * 64) is None


def test_the_local_stack_starting_again_puts_a_stale_pointer_right(
    world: World, races: Races, s3: Any
) -> None:
    from gallop.local.repair import repair

    # GIVEN v2's features READY but the pointer still naming v1 (a crash between the two)
    engine, store, spec = world.engine, world.store, world.spec
    add_version(engine, store, spec, "v-2", races.v2)
    assert build(engine, store, spec, "v-2").status == FeatureStatus.READY.value
    key = online_snapshot_key(spec.name, spec.spec_hash)
    before = read_pointer(store, spec.name, spec.spec_hash)
    assert before is not None
    store.put_json(key, {**before.to_json(), "version_id": "v-1"})
    # WHEN the local stack repairs what a crash left THEN race cards point at v2 again
    requested: list[FeaturesRequest] = []
    repair(engine, store, Store(ARTIFACTS, s3), requested.append)
    assert read_pointer(store, spec.name, spec.spec_hash) == before
    assert requested == []  # nothing else was missing


def test_a_container_trusts_the_pointer_it_read_for_the_ttl(world: World, races: Races) -> None:
    engine, store, spec = world.engine, world.store, world.spec
    now = [0.0]
    pointers = PointerCache(lambda: store, ttl=30, clock=lambda: now[0])
    # GIVEN a container that read v1's pointer
    assert pointers.get(spec.name, spec.spec_hash).version_id == "v-1"  # type: ignore[union-attr]
    assert pointers.get(spec.name, "f" * 64) is None  # none published: an answer too
    # WHEN v2 is published
    add_version(engine, store, spec, "v-2", races.v2)
    build(engine, store, spec, "v-2")
    store.put_json(online_snapshot_key(spec.name, "f" * 64), {"not": "a pointer"})
    # THEN within the TTL it still answers v1; past it, v2
    now[0] = 30.0
    assert pointers.get(spec.name, spec.spec_hash).version_id == "v-1"  # type: ignore[union-attr]
    assert pointers.get(spec.name, "f" * 64) is None
    now[0] = 30.5
    assert pointers.get(spec.name, spec.spec_hash).version_id == "v-2"  # type: ignore[union-attr]
    # AND an object that is not a pointer is refused, never read as one
    with pytest.raises(PointerUnreadable):
        pointers.get(spec.name, "f" * 64)
    store.put_bytes(online_snapshot_key(spec.name, "f" * 64), b"{", "application/json")
    with pytest.raises(PointerUnreadable, match="not JSON"):
        read_pointer(store, spec.name, "f" * 64)


# -- cards through the predict handler -------------------------------------------------------


def test_a_card_is_answered_from_the_newest_snapshot_or_pinned_to_the_training_one(
    world: World, races: Races
) -> None:
    engine, store, spec = world.engine, world.store, world.spec
    # GIVEN no pointer yet (a dataset whose features predate pointers): the training one
    store.delete(online_snapshot_key(spec.name, spec.spec_hash))
    status, reply = ask(world, card_body(races.card_rows))
    assert status == 200, reply
    training = {"version_id": "v-1", "data_end": iso(races.v1_end), "snapshot": "training"}
    assert reply["features_as_of"] == training
    stale = [p["score"] for p in reply["predictions"]]
    assert stale == pytest.approx(offline_scores(world, races.v1, races.card_rows), abs=1e-4)
    # WHEN v2 (later races, a jockey the model never saw) has READY features
    add_version(engine, store, spec, "v-2", races.v2)
    build(engine, store, spec, "v-2")
    status, reply = ask(world, card_body(races.card_rows))
    # THEN the card is completed from v2, and says so
    assert status == 200, reply
    online = {"version_id": "v-2", "data_end": iso(races.v2_end), "snapshot": "online"}
    assert reply["features_as_of"] == online
    fresh = [p["score"] for p in reply["predictions"]]
    # AND its scores are the model's on the offline features of the whole history, coded
    # with the model's own vocabularies (v2's puts every jockey one code later)
    assert fresh == pytest.approx(offline_scores(world, races.v2, races.card_rows), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(fresh, stale, strict=True)) > 1e-3
    # AND pinned, the model's own snapshot answers as before
    status, reply = ask(world, card_body(races.card_rows, snapshot="training"))
    assert status == 200 and reply["features_as_of"] == training
    assert [p["score"] for p in reply["predictions"]] == pytest.approx(stale, abs=1e-6)
    assert ask(world, card_body(races.card_rows, snapshot="online"))[1]["features_as_of"] == online
    # AND explanations of the card say the same, in the caller's words
    status, explained = ask(
        world, card_body(races.card_rows, top_k=len(world.model.features)), explain=True
    )
    assert status == 200 and explained["features_as_of"] == online
    parts = explained["explanations"][0]
    assert parts["base_value"] + sum(parts["contributions"].values()) == pytest.approx(fresh[0])
    jockeys = [t["value"] for t in parts["top"] if t["feature"] == "jockey_id"]
    assert jockeys == [races.card_rows["jockey_id"].iloc[0]]


def test_a_card_for_a_race_the_snapshot_has_seen_is_refused_naming_both_times(
    world: World, races: Races
) -> None:
    add_version(world.engine, world.store, world.spec, "v-2", races.v2)
    build(world.engine, world.store, world.spec, "v-2")
    # WHEN a card for a race between v1's end and v2's end is sent
    status, reply = ask(world, card_body(races.between))
    # THEN it is refused: v2's snapshot knows results after it
    assert status == 409, reply
    starts = iso(races.between["race_time"].iloc[0])
    assert starts in reply["detail"] and iso(races.v2_end) in reply["detail"]
    assert "v-2" in reply["detail"] and "see the future" in reply["detail"]
    # AND pinned to the model's snapshot (which ends before it) it is answered
    status, reply = ask(world, card_body(races.between, snapshot="training"))
    assert status == 200 and reply["features_as_of"]["version_id"] == "v-1"
    # AND a card at the very time of the newest race is refused too
    at_end = card_body(races.card_rows)
    for row in at_end["rows"]:
        row["race_time"] = iso(races.v2_end)
    assert ask(world, at_end)[0] == 409


@pytest.mark.parametrize("snapshot", ["latest", None, 1, ["online"]])
def test_the_snapshot_asked_for_must_be_online_or_training(
    world: World, races: Races, snapshot: Any
) -> None:
    status, reply = ask(world, card_body(races.card_rows, snapshot=snapshot))
    assert status == 422 and "'snapshot' must be 'online'" in reply["detail"]


def test_feature_rows_say_nothing_of_a_snapshot(world: World, races: Races) -> None:
    row = {name: 0.0 for name in world.model.features} | {"race_id": "r1"}
    status, reply = ask(world, {"model": MODEL_ID, "rows": [row, row]})
    assert status == 200 and set(reply) == {"model_id", "predictions"}


# -- the vocabulary a card is coded with ----------------------------------------------------


def test_card_categories_are_coded_with_the_vocabularies_given(
    races: Races, races_spec: DatasetSpec
) -> None:
    from gallop.features.build import build_features

    # GIVEN v2's snapshot, whose jockey vocabulary starts with a jockey v1 never saw (a
    # later text takes the next code, but a rebuild after a late result can put it first)
    v1 = build_features(races.v1, races_spec).manifest["categorical"]
    state = State.from_bytes(build_features(races.v2, races_spec).state.to_bytes())
    assert state.meta["categories"]["jockey_id"] == [*v1["jockey_id"], NEW_JOCKEY]
    state.meta["categories"]["jockey_id"] = [NEW_JOCKEY, *v1["jockey_id"]]
    card = card_of(races.card_rows)
    card[1]["jockey_id"] = NEW_JOCKEY
    # WHEN the card is coded with v1's vocabularies (the model's)
    names, coded = card_features(card, state, vocabularies=v1)
    names, by_snapshot = card_features(card, state)
    at = names.index("jockey_id")
    # THEN each jockey is its place in v1's vocabulary, and the one v1 lacks is missing
    assert coded[0, at] == v1["jockey_id"].index(card[0]["jockey_id"])
    assert np.isnan(coded[1, at])
    # (the snapshot's own vocabulary would have coded them otherwise)
    assert by_snapshot[0, at] == coded[0, at] + 1 and by_snapshot[1, at] == 0
    others = [i for i, name in enumerate(names) if name not in v1]
    np.testing.assert_array_equal(coded[:, others], by_snapshot[:, others])


def test_a_card_not_after_the_snapshot_is_refused_before_any_feature_is_computed(
    races: Races, races_spec: DatasetSpec
) -> None:
    from gallop.features.build import build_features

    state = build_features(races.v2, races_spec).state
    with pytest.raises(CardBeforeSnapshot) as refused:
        card_features(card_of(races.between), state)
    assert refused.value.data_end == micros_of(iso(races.v2_end))
    assert refused.value.card_time == micros_of(iso(races.between["race_time"].iloc[0]))


def test_a_card_is_computed_from_its_own_keys_entries_alone(
    races: Races, races_spec: DatasetSpec
) -> None:
    from gallop.features.build import build_features
    from gallop.features.engine import compute
    from gallop.features.online import _spec_and_plan, card_state, card_table
    from gallop.features.roles import roles_for

    # GIVEN a snapshot and a card with a new horse and a runner without a trainer
    state = build_features(races.v2, races_spec).state
    card = card_of(races.card_rows)
    card[0]["horse_id"], card[1]["trainer_id"] = "a horse never seen", None
    spec, plan = _spec_and_plan(
        json.dumps(state.meta["spec"], sort_keys=True), tuple(state.meta["data_numeric"])
    )
    table = card_table(card, spec, plan.numeric_inputs, plan.text_keys)
    # WHEN the card's part of the snapshot is taken
    part = card_state(state, table, plan)
    # THEN it holds the card's horses' entries only, in the snapshot's order
    horses = part.keys["horse_id"]
    assert set(horses.career_keys.tolist()) == {r["horse_id"] for r in card[1:]}
    assert 0 < len(horses.tail_keys) < len(state.keys["horse_id"].tail_keys) / 10
    assert (np.diff(horses.tail_times[horses.tail_keys == card[1]["horse_id"]]) >= 0).all()
    # AND the card's features are those the whole snapshot gives, bit for bit
    roles = roles_for(spec)
    whole, _ = compute(table, plan, roles, state)
    from_part, _ = compute(table, plan, roles, part)
    for name in plan.features:
        np.testing.assert_array_equal(from_part[name], whole[name], err_msg=name)
    assert card_state(state, table, plan).keys["horse_id"].career_keys.tolist() == (
        horses.career_keys.tolist()
    )
