"""Feature extraction: point in time, the same offline and online, declared in the spec."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gallop.features.build import build_features
from gallop.features.online import CardError, card_features
from gallop.features.state import State
from gallop.ingest.validate import validate
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races

CARD_FIELDS = [
    "race_id",
    "race_time",
    "horse_id",
    "jockey_id",
    "trainer_id",
    "course",
    "going",
    "distance_m",
    "race_class",
    "draw",
    "weight_kg",
    "age",
    "odds",
]


def canonical(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    result = validate(frame.astype(str), spec)
    assert result.ok, [p.message for p in result.problems]
    assert result.canonical is not None
    return result.canonical


def keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["race_id", "horse_id"]).sort_index()


def card_of(rows: pd.DataFrame) -> list[dict]:
    """What an application sends before the off: no position, nothing post-race."""
    card = []
    for record in rows[CARD_FIELDS].to_dict("records"):
        record["race_time"] = pd.Timestamp(record["race_time"]).isoformat()
        card.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in record.items()})
    return card


# -- offline / online parity -------------------------------------------------------------


def test_online_rows_equal_offline_rows_for_held_back_races(races_spec: DatasetSpec) -> None:
    # GIVEN a history and the offline features of all of it
    runners, _ = generate_races(400, seed=5)
    # Some trainers unknown (a categorical may be missing): offline and online agree on it.
    runners.loc[runners.index[-40::7], "trainer_id"] = ""
    full = canonical(runners, races_spec)
    offline = keyed(build_features(full, races_spec).frame)
    held_back = sorted(full["race_time"].unique())[-12:]
    checked = with_history = 0
    for moment in held_back:
        # WHEN a snapshot is built from the races strictly before, and shipped as bytes
        history = full[full["race_time"] < moment]
        state = State.from_bytes(build_features(history, races_spec).state.to_bytes())
        rows = full[full["race_time"] == moment]
        # The card carries the values as an application sends them (decimals such as 57.1),
        # not the stored float32 copies.
        order = list(zip(rows["race_id"], rows["horse_id"], strict=True))[::-1]  # any order
        raw = keyed(runners).loc[order]
        names, online = card_features(card_of(raw.reset_index()), state)
        # THEN the card's rows are the offline rows, float32 for float32 (NaN where NaN)
        expected = offline.loc[order, names]
        np.testing.assert_array_equal(online, expected.to_numpy(dtype=np.float32))
        checked += len(rows)
        with_history += int((~np.isnan(online[:, names.index("horse_position_mean_5")])).sum())
    assert checked >= 20 and with_history >= 10, "the held-back runners must have histories"


def test_a_card_dated_inside_the_snapshot_is_refused(races_spec: DatasetSpec) -> None:
    runners, _ = generate_races(60, seed=2)
    full = canonical(runners, races_spec)
    state = build_features(full, races_spec).state
    last_race = full[full["race_time"] == full["race_time"].max()]
    with pytest.raises(CardError, match="at or before .* the newest race in the entity snapshot"):
        card_features(card_of(last_race), state)


def test_a_card_with_a_text_where_a_number_belongs_is_refused(races_spec: DatasetSpec) -> None:
    runners, _ = generate_races(60, seed=2)
    full = canonical(runners, races_spec)
    state = build_features(full[full["race_time"] < full["race_time"].max()], races_spec).state
    card = card_of(full[full["race_time"] == full["race_time"].max()])
    card[0]["weight_kg"] = "heavy"
    with pytest.raises(
        CardError, match=r"'weight_kg' has values that are not numbers \(1 row: 1\)"
    ):
        card_features(card, state)
    del card[0]["horse_id"]
    with pytest.raises(CardError, match="no 'horse_id'"):
        card_features(card, state)


def test_a_card_with_a_misspelt_or_left_out_field_is_refused(races_spec: DatasetSpec) -> None:
    runners, _ = generate_races(60, seed=2)
    full = canonical(runners, races_spec)
    state = build_features(full[full["race_time"] < full["race_time"].max()], races_spec).state
    card = card_of(full[full["race_time"] == full["race_time"].max()])
    # a typo would otherwise be a missing value, silently
    card[0]["odd"] = card[0].pop("odds")
    with pytest.raises(CardError, match=r"unknown fields \['odd'\]"):
        card_features(card, state)
    del card[0]["odd"]
    with pytest.raises(CardError, match=r"card row 1 lacks \['odds'\] \(send null"):
        card_features(card, state)
    # null is how a card says a value is unknown
    card[0]["odds"] = None
    card_features(card, state)


def test_numeric_ids_on_a_card_are_the_keys_ingestion_wrote(races_spec: DatasetSpec) -> None:
    # GIVEN jockeys with numeric ids, which ingestion stores as text ("23")
    runners, _ = generate_races(80, seed=3)
    runners["jockey_id"] = runners["jockey_id"].str.lstrip("J0").replace("", "0")
    full = canonical(runners, races_spec)
    last = full["race_time"] == full["race_time"].max()
    state = build_features(full[~last], races_spec).state
    offline = build_features(full, races_spec).frame[last.to_numpy()]
    # WHEN a card sends them as numbers, as a CSV read by pandas or a JSON client may
    card = card_of(full[last])
    for row in card:
        row["jockey_id"] = float(row["jockey_id"])
    names, online = card_features(card, state)
    # THEN the jockeys' histories are found: the rows equal the offline ones
    np.testing.assert_array_equal(online, offline[names].to_numpy(dtype=np.float32))


def test_a_card_spanning_start_times_is_refused(races_spec: DatasetSpec) -> None:
    # A jockey's earlier ride on the card would count as a run with no known result.
    runners, _ = generate_races(60, seed=2)
    full = canonical(runners, races_spec)
    times = sorted(full["race_time"].unique())
    state = build_features(full[full["race_time"] < times[-2]], races_spec).state
    with pytest.raises(CardError, match="different start times"):
        card_features(card_of(full[full["race_time"] >= times[-2]]), state)


# -- a card keeps ingestion's rules -------------------------------------------------------


@pytest.fixture(scope="module")
def held_back(races_spec: DatasetSpec) -> tuple[pd.DataFrame, State]:
    """Generated races as an upload holds them, and the snapshot of all but the last."""
    runners, _ = generate_races(60, seed=2)
    last = runners["race_id"] == runners["race_id"].iloc[-1]
    return runners, build_features(canonical(runners[~last], races_spec), races_spec).state


BROKEN = [  # a field, its value as a card sends it and as an upload writes it, the codes
    ("odds", 0.0, "0", {"invalid_odds"}),
    ("odds", -5.0, "-5", {"invalid_odds"}),
    ("odds", math.inf, "inf", {"invalid_odds", "infinite_value"}),
    ("weight_kg", 1e39, "1e39", {"out_of_range"}),
    ("draw", "outside", "outside", {"not_numeric"}),
    ("race_time", "next tuesday", "next tuesday", {"not_a_time"}),
    ("horse_id", None, "", {"missing_key"}),
    ("horse_id", "H-TWICE", "H-TWICE", {"duplicate_entity_in_group"}),
]


@pytest.mark.parametrize(
    ("field", "sent", "written", "codes"),
    BROKEN,
    ids=[
        "odds-0",
        "odds-minus-5",
        "odds-inf",
        "beyond-float32",
        "text",
        "time",
        "no-horse",
        "horse-twice",
    ],
)
def test_a_card_is_refused_what_an_upload_is_refused_under_the_same_code(
    held_back: tuple[pd.DataFrame, State],
    races_spec: DatasetSpec,
    field: str,
    sent: object,
    written: str,
    codes: set[str],
) -> None:
    runners, state = held_back
    race = np.flatnonzero(runners["race_id"] == runners["race_id"].iloc[-1])
    broken = race[[1, 3]]  # the last race's second and fourth runners
    # GIVEN the value in those runners' rows of an upload, and of the race's card
    upload = runners.astype(str)
    upload.loc[upload.index[broken], field] = written
    card = card_of(runners.iloc[race])
    for row in (1, 3):
        card[row][field] = sent
    # WHEN ingestion validates the upload and the card is sent
    uploaded = validate(upload, races_spec).problems
    with pytest.raises(CardError) as refused:
        card_features(card, state)
    # THEN both name the same rules on the same column, at those runners' rows
    carded = refused.value.problems
    assert {(p.code, p.column) for p in carded} == {(p.code, field) for p in uploaded}
    assert {p.code for p in carded} == codes
    assert all(p.rows == [2, 4] for p in carded)  # counted from 1, as in the upload
    assert all(p.rows == (broken + 1).tolist() for p in uploaded)
    assert all(p.message in str(refused.value) for p in carded)


def test_a_card_says_unknown_with_null_not_nan(held_back: tuple[pd.DataFrame, State]) -> None:
    runners, state = held_back
    card = card_of(runners[runners["race_id"] == runners["race_id"].iloc[-1]])
    # NaN is no JSON number: a card says a value is unknown with null
    card[2]["odds"] = math.nan
    with pytest.raises(CardError) as refused:
        card_features(card, state)
    (problem,) = refused.value.problems
    assert (problem.code, problem.column, problem.rows) == ("not_numeric", "odds", [3])
    card[2]["odds"] = None
    names, matrix = card_features(card, state)
    assert np.isnan(matrix[2, names.index("odds")])


# -- no look-ahead, as properties ---------------------------------------------------------

SMALL_SPEC = DatasetSpec.model_validate(
    {
        "name": "small",
        "task": "ranking",
        "target": "position",
        "target_order": "ascending",
        "group": "race_id",
        "time": "race_time",
        "entity": "horse_id",
        "features": ["weight_kg"],
        "categorical": ["jockey_id", "trainer_id"],
        "post_race": ["finish_secs"],
        "derived": {
            "rolling": [
                {
                    "by": "horse_id",
                    "column": "position",
                    "windows": [1, 2],
                    "stats": ["mean", "min", "max", "count", "last"],
                },
                {"by": "jockey_id", "column": "finish_secs", "windows": [3]},
                {"by": "horse_id", "column": "beaten_share", "windows": [2]},
            ],
            "career": [
                {"by": "horse_id"},
                {"by": "jockey_id"},
                {"by": ["jockey_id", "trainer_id"], "stats": ["runs", "win_rate"]},
            ],
            "since_last": [{"by": "horse_id"}, {"by": "trainer_id", "unit": "hours"}],
            "interactions": [
                {"kind": "ratio", "left": "position", "right": "field_size", "name": "beaten_share"}
            ],
            "relative": [
                {
                    "column": "weight_kg",
                    "kinds": ["rank", "zscore", "diff_mean", "diff_best", "log_implied"],
                },
                {"column": "horse_position_mean_2", "kinds": ["rank", "diff_best"]},
            ],
            "field_size": True,
        },
    }
)


@st.composite
def histories(draw: st.DrawFn) -> pd.DataFrame:
    horses = [f"H{i}" for i in range(6)]
    rows = []
    day = 1
    for race in range(draw(st.integers(2, 7))):
        day += draw(st.integers(0, 2))  # 0: at the same time as the race before
        size = draw(st.integers(2, 5))
        field = draw(st.permutations(horses))[:size]
        finish = list(draw(st.permutations(range(1, size + 1))))
        if size >= 3 and draw(st.booleans()):  # a dead heat for first
            finish = [1 if p == 2 else p for p in finish]
        for horse, position in zip(field, finish, strict=True):
            rows.append(
                {
                    "race_id": f"R{race}",
                    "race_time": f"2024-03-{day:02d}T14:00:00Z",
                    "horse_id": horse,
                    "jockey_id": draw(st.sampled_from(["J0", "J1", "J2", ""])),
                    "trainer_id": draw(st.sampled_from(["T0", "T1"])),
                    "position": position,
                    "weight_kg": draw(st.sampled_from([52.5, 55.0, 57.25, 60.0])),
                    "finish_secs": 60.0 + position + draw(st.sampled_from([0.0, 0.5])),
                }
            )
    return pd.DataFrame(rows)


def features_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The features by (race, horse), a category as its text: its code is its place in a
    vocabulary learnt from every row, a label that a jockey first seen later may shift
    (as it may between two models), not what the row knew."""
    built = build_features(canonical(frame, SMALL_SPEC), SMALL_SPEC)
    features = keyed(built.frame)[built.plan.features].copy()
    for name, vocabulary in built.manifest["categorical"].items():
        codes = features[name].to_numpy()
        features[name] = [vocabulary[int(c)] if c == c else None for c in codes]
    return features


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.index) == list(b.index)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(history=histories(), data=st.data())
def test_later_races_never_change_earlier_features(
    history: pd.DataFrame, data: st.DataObject
) -> None:
    times = sorted(history["race_time"].unique())
    if len(times) < 2:
        return
    cut = data.draw(st.sampled_from(times[1:]))
    earlier = history["race_time"] < cut
    later_races = sorted(history.loc[~earlier, "race_id"].unique())
    victim = data.draw(st.sampled_from(later_races))
    change = data.draw(st.sampled_from(["append", "change", "delete"]))
    edited = history.copy()
    if change == "append":
        extra = history[history["race_id"] == history["race_id"].iloc[0]].copy()
        extra["race_id"], extra["race_time"] = "R-NEW", "2024-04-30T14:00:00Z"
        edited = pd.concat([edited, extra])
    elif change == "change":
        rows = edited["race_id"] == victim
        edited.loc[rows, "position"] = edited.loc[rows, "position"].to_numpy()[::-1]
        edited.loc[rows, "weight_kg"] = 61.5
        edited.loc[rows, "finish_secs"] += 3.0
    else:
        edited = edited[edited["race_id"] != victim]
    before = features_of(history)
    after = features_of(edited)
    keep = history.loc[earlier, ["race_id", "horse_id"]].itertuples(index=False)
    index = pd.MultiIndex.from_tuples(sorted(keep))
    assert_same(before.loc[index], after.loc[index])


@PROPERTY
@given(history=histories(), data=st.data())
def test_a_rows_own_result_never_reaches_its_own_features(
    history: pd.DataFrame, data: st.DataObject
) -> None:
    race = data.draw(st.sampled_from(sorted(history["race_id"].unique())))
    rows = history["race_id"] == race
    moment = history.loc[rows, "race_time"].iloc[0]
    edited = history.copy()
    # Another finishing order, other post-race values: everything known only afterwards.
    edited.loc[rows, "position"] = data.draw(st.permutations(list(edited.loc[rows, "position"])))
    edited.loc[rows, "finish_secs"] = edited.loc[rows, "finish_secs"] + 7.0
    before, after = features_of(history), features_of(edited)
    # Neither this race nor any race at the same time may see the difference.
    same_time = history.loc[history["race_time"] <= moment, ["race_id", "horse_id"]]
    index = pd.MultiIndex.from_tuples(sorted(same_time.itertuples(index=False)))
    assert_same(before.loc[index], after.loc[index])


def test_post_race_values_are_offered_only_through_history() -> None:
    built = build_features(canonical(BY_HAND, SMALL_SPEC), SMALL_SPEC)
    assert {"position", "finish_secs", "beaten_share"} <= built.plan.post_race
    assert not {"position", "finish_secs", "beaten_share"} & set(built.plan.features)
    assert {"horse_beaten_share_mean_2", "jockey_finish_secs_mean_3"} <= set(built.plan.features)


BY_HAND = pd.DataFrame(
    [
        ("R1", "2024-01-01T12:00Z", "A", "J0", "T0", 1, 55.0, 60.0),
        ("R1", "2024-01-01T12:00Z", "B", "J0", "T1", 2, 57.0, 61.0),
        ("R2", "2024-01-03T12:00Z", "A", "J1", "T0", 3, 56.0, 62.0),
        ("R2", "2024-01-03T12:00Z", "B", "J0", "T1", 1, 54.0, 60.5),
        ("R2", "2024-01-03T12:00Z", "C", "J2", "T0", 2, 58.0, 61.5),
    ],
    columns=[
        "race_id",
        "race_time",
        "horse_id",
        "jockey_id",
        "trainer_id",
        "position",
        "weight_kg",
        "finish_secs",
    ],
)


def test_values_by_hand_for_one_small_history() -> None:
    f = features_of(BY_HAND)
    a2, b2, c2 = f.loc[("R2", "A")], f.loc[("R2", "B")], f.loc[("R2", "C")]
    assert (a2["horse_position_last_1"], a2["horse_runs"], a2["horse_wins"]) == (1, 1, 1)
    assert a2["horse_days_since_last"] == 2.0
    assert a2["horse_win_rate"] == pytest.approx((1 + 0.5) / (1 + 5))
    assert b2["horse_beaten_share_mean_2"] == pytest.approx(1.0)  # 2nd of 2
    # J0 rode twice in R1 (1st and 2nd): both rides count, both before R2.
    assert b2["jockey_runs"] == 2 and b2["jockey_wins"] == 1
    assert b2["jockey_finish_secs_mean_3"] == pytest.approx(60.5)
    assert b2["trainer_hours_since_last"] == 48.0
    assert np.isnan(c2["horse_position_mean_2"]) and c2["horse_runs"] == 0
    assert c2["horse_win_rate"] == pytest.approx(0.1)  # a newcomer gets the prior
    # Within the race: weights 56, 54, 58 -> ranks (lower is better here) 2, 1, 3.
    assert (a2["weight_kg_rank"], b2["weight_kg_rank"], c2["weight_kg_rank"]) == (2, 1, 3)
    assert a2["weight_kg_diff_mean"] == 0 and c2["weight_kg_diff_best"] == 4
    assert a2["field_size"] == 3
    r1 = f.loc[("R1", "A")]
    assert r1["horse_runs"] == 0 and np.isnan(r1["horse_position_last_1"])


# -- bad specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("derived", "says"),
    [
        (
            {"rolling": [{"by": "horse_id", "column": "speed", "windows": [3]}]},
            "rolling[0]: unknown column 'speed'",
        ),
        (
            {"rolling": [{"by": "horse_id", "column": "draw", "windows": [3, 0]}]},
            "rolling.0.windows",
        ),
        (
            {"rolling": [{"by": "horse_id", "column": "course", "windows": [3]}]},
            "rolling[0]: column 'course' is text",
        ),
        (
            {"relative": [{"column": "going", "kinds": ["rank"]}]},
            "relative[0]: column 'going' is text",
        ),
        (
            {
                "interactions": [
                    {"kind": "ratio", "left": "weight_kg", "right": "b", "name": "a"},
                    {"kind": "product", "left": "a", "right": "draw", "name": "b"},
                ]
            },
            "cycle: interactions[0] -> interactions[1] -> interactions[0]",
        ),
        ({"career": [{"by": "draw"}]}, "career[0]: 'by' column 'draw' must be the entity"),
        (
            {"interactions": [{"kind": "ratio", "left": "draw", "right": "age", "name": "odds"}]},
            "interactions[0]: output 'odds' clashes",
        ),
    ],
)
def test_bad_derived_entries_are_refused_naming_the_entry(
    races_spec: DatasetSpec, derived: dict, says: str
) -> None:
    body = races_spec.model_dump(mode="json") | {"derived": derived}
    with pytest.raises(ValidationError) as caught:
        DatasetSpec.model_validate(body)
    assert says in str(caught.value)


def test_entity_history_needs_a_time_column(races_spec: DatasetSpec) -> None:
    body = races_spec.model_dump(mode="json") | {"time": None}
    with pytest.raises(ValidationError, match=r"rolling\[0\]: entity history needs"):
        DatasetSpec.model_validate(body)


def test_an_all_equal_field_has_z_scores_of_zero(races_spec: DatasetSpec) -> None:
    # A field of debutants all have the prior win rate 0.1, and 0.1 * 3 / 3 is not 0.1 in
    # floating point: the z-score must not turn that rounding into +-1.
    spec = DatasetSpec.model_validate(
        races_spec.model_dump(mode="json")
        | {
            "derived": {
                "career": [{"by": "horse_id"}],
                "relative": [{"column": "horse_win_rate", "kinds": ["zscore"]}],
            }
        }
    )
    runners, _ = generate_races(12, seed=8)
    z = build_features(canonical(runners, spec), spec).frame
    first_race = z["race_id"] == z["race_id"].min()
    assert len(z[first_race]) >= 3
    np.testing.assert_array_equal(z.loc[first_race, "horse_win_rate_zscore"], 0)


def test_binary_races_count_positives_as_wins_and_a_race_without_one_has_no_winner() -> None:
    spec = DatasetSpec.model_validate(
        {
            "name": "clicks",
            "task": "binary",
            "target": "won",
            "group": "race_id",
            "time": "race_time",
            "entity": "horse_id",
            "features": ["weight_kg"],
            "derived": {"career": [{"by": "horse_id"}]},
        }
    )
    frame = pd.DataFrame(
        [
            ("R1", "2024-01-01T12:00Z", "A", 1, 55.0),
            ("R1", "2024-01-01T12:00Z", "B", 0, 56.0),
            ("R2", "2024-01-02T12:00Z", "A", 0, 55.0),
            ("R2", "2024-01-02T12:00Z", "B", 0, 56.0),
            ("R3", "2024-01-03T12:00Z", "A", 0, 55.0),
            ("R3", "2024-01-03T12:00Z", "B", 0, 56.0),
        ],
        columns=["race_id", "race_time", "horse_id", "won", "weight_kg"],
    )
    built = build_features(canonical(frame, spec), spec)
    f = keyed(built.frame)
    assert (f.loc[("R3", "A"), "horse_wins"], f.loc[("R3", "B"), "horse_wins"]) == (1, 0)
    # Places are wins in a binary task: B has neither.
    assert f.loc[("R3", "B"), "horse_place_rate"] == pytest.approx(0.5 / 7)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"rolling": [{"by": [], "column": "draw", "windows": [3]}]}, "rolling.0.by"),
        ({"career": [{"by": ["jockey_id", "jockey_id"]}]}, "names a column twice"),
        ({"rolling": [{"by": "horse_id", "column": "draw", "windows": [10**9]}]}, "1 to 1000"),
        ({"career": [{"by": "horse_id", "prior_runs": 0}]}, "career.0.prior_runs"),
    ],
)
def test_specs_that_would_crash_or_divide_by_zero_later_are_refused_now(
    races_spec: DatasetSpec, entry: dict, says: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        DatasetSpec.model_validate(races_spec.model_dump(mode="json") | {"derived": entry})


def test_log_implied_is_the_log_of_the_normalised_inverse_odds() -> None:
    from gallop.features.engine import _relative
    from gallop.features.spec import Relative

    odds = np.array([2.0, 4.0, 4.0, np.nan, 3.0, 0.0])
    groups = np.array([0, 0, 0, 0, 1, 1])
    out = _relative(Relative(column="odds", kinds=["log_implied"]), odds, groups)
    got = out["odds_log_implied"]
    np.testing.assert_allclose(got[:3], np.log([0.5, 0.25, 0.25]))  # 1/2 + 1/4 + 1/4 = 1
    assert np.isnan(got[3]) and np.isnan(got[5])  # no price, or a price that is no price
    assert got[4] == 0.0  # the only priced runner: certain
