"""Categorical columns as model inputs: coded from their text alike offline, on race cards
and in /v1/predict; text the training rows did not hold is missing, never an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gallop.features.build import build_features
from gallop.features.categories import MAX_CATEGORIES, encode, learn_vocabulary
from gallop.features.online import card_features
from gallop.ingest.validate import validate
from gallop.serving.model import LoadedModel
from gallop.serving.predict import explain_body, predict_body
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from gallop.training.runner import holdout_split, train_locally


def test_a_vocabulary_is_the_sorted_texts_and_anything_else_is_missing() -> None:
    texts = np.array(["soft", "good", "", "firm", "good"])
    vocabulary = learn_vocabulary(texts)
    assert vocabulary == ["firm", "good", "soft"]
    codes = encode(np.array(["good", "heavy", "", "firm", "soft"]), vocabulary)
    assert codes.dtype == np.float32
    np.testing.assert_array_equal(codes, [1, np.nan, np.nan, 0, 2])
    assert np.isnan(encode(np.array(["good"]), [])).all()
    # Past the cap, the most frequent texts stay (ties by text)
    many = np.array([f"c{i:04d}" for i in range(MAX_CATEGORIES + 5)] + ["c0007"] * 3)
    kept = learn_vocabulary(many)
    assert len(kept) == MAX_CATEGORIES and "c0007" in kept and kept == sorted(kept)
    assert "c1004" not in kept  # one of the least frequent, last by text


def test_texts_first_seen_later_take_the_next_codes_and_leave_the_earlier_ones() -> None:
    # GIVEN a history's texts with their times, and later rows bringing a new text
    texts = np.array(["soft", "good", "firm", "good"])
    times = np.array([30, 10, 20, 40])
    history = learn_vocabulary(texts, times)
    assert history == ["good", "firm", "soft"]  # in the order they first appear
    later = learn_vocabulary(np.concatenate([texts, ["heavy", "firm"]]), np.r_[times, 50, 60])
    # THEN the new text takes the next code and every text the history held keeps its own
    assert later == [*history, "heavy"]
    codes = encode(np.array(["soft", "heavy", "good", "x"]), later)
    np.testing.assert_array_equal(codes, [2, 3, 0, np.nan])
    # AND ties in time go by text; a text first seen before the newest moves the others
    assert learn_vocabulary(np.array(["b", "a"]), np.array([5, 5])) == ["a", "b"]
    assert learn_vocabulary(np.r_[texts, ["early"]], np.r_[times, 1])[0] == "early"


def test_race_cards_code_categories_as_the_offline_features_do(races_spec: DatasetSpec) -> None:
    # GIVEN the features of generated races, whose spec lists course, going, jockey, trainer
    runners, _ = generate_races(120, seed=3)
    built = build_features(validate(runners.astype(str), races_spec).canonical, races_spec)
    vocabularies = built.manifest["categorical"]
    assert set(vocabularies) == set(races_spec.categorical) <= set(built.manifest["features"])
    for name, vocabulary in vocabularies.items():
        coded = built.frame[name].to_numpy()
        texts = np.array(vocabulary)[coded[~np.isnan(coded)].astype(int)]
        assert set(texts) <= set(runners[name].astype(str))
    # WHEN a card for a new race names a known going and an unknown jockey
    last = runners[runners["race_id"] == runners["race_id"].iloc[-1]]
    card = last.drop(columns=[c for c in races_spec.post_race + [races_spec.target] if c in last])
    card = card.assign(race_id="new", race_time="2031-01-01T12:00:00Z")
    rows = card.astype(object).where(card.notna(), None).to_dict("records")
    rows[0]["jockey_id"] = "nobody we know"
    names, matrix = card_features(rows, built.state)
    at = {name: names.index(name) for name in races_spec.categorical}
    # THEN known texts get the offline codes and the unknown one is missing
    going = vocabularies["going"].index(str(rows[1]["going"]))
    assert matrix[1, at["going"]] == going
    assert np.isnan(matrix[0, at["jockey_id"]])
    assert matrix[1, at["jockey_id"]] == vocabularies["jockey_id"].index(str(rows[1]["jockey_id"]))


@pytest.fixture(scope="module")
def coloured_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary model whose strongest input is a colour, given as text."""
    rng = np.random.default_rng(2)
    n = 1500
    colour = rng.choice(["red", "green", "blue", "amber", "violet"], n)
    x = rng.normal(size=n)
    logit = 2.5 * np.isin(colour, ["red", "amber"]) - 1.2 + 0.5 * x
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"x": x, "colour": colour, "y": y})
    spec = DatasetSpec.model_validate(
        {"name": "colours", "task": "binary", "target": "y", "categorical": ["colour"]}
    )
    built = build_features(validate(frame.astype(str), spec).canonical, spec)
    train, test = holdout_split(built.frame, built.manifest)
    return train_locally(
        train,
        test,
        built.manifest,
        tmp_path_factory.mktemp("colours"),
        progress=lambda _: None,
        base_hyperparameters={"num_boost_round": 60},
        stack_hyperparameters={"run_id": "r1", "data_version": "v1", "code_version": "c1"},
    )


def test_predict_takes_a_category_as_text_and_an_unseen_one_as_missing(
    coloured_model: Path,
) -> None:
    model = LoadedModel.from_dir(coloured_model)
    assert model.manifest["categorical"] == {"colour": ["amber", "blue", "green", "red", "violet"]}
    rows = [
        {"x": 0.1, "colour": "red"},
        {"x": 0.1, "colour": "blue"},
        {"x": 0.1, "colour": "mauve"},  # never seen
        {"x": 0.1, "colour": None},
    ]
    out = [p["probability"] for p in predict_body(model, {"rows": rows})["predictions"]]
    # The colour decides: red is far likelier than blue; the unseen one scores as missing
    assert out[0] > out[1] + 0.2
    assert out[2] == pytest.approx(out[3], abs=1e-7)
    # The graph on the codes gives the same (red is code 3)
    graph = model.run(np.array([[0.1, 3.0]], dtype=np.float32))
    assert graph["probability"][0, 0] == pytest.approx(out[0], abs=1e-7)
    # AND explanations name the colour and add up to the score
    explained = explain_body(model, {"rows": rows}, top_k=2)["explanations"]
    scores = [p["score"] for p in predict_body(model, {"rows": rows})["predictions"]]
    for explanation, score in zip(explained, scores, strict=True):
        total = explanation["base_value"] + sum(explanation["contributions"].values())
        assert total == pytest.approx(score, abs=1e-5)
    assert "colour" in explained[0]["contributions"]
    # in the caller's words: the text it sent, not the code the model reads
    reasons = {t["feature"]: t for t in explained[0]["top"]}
    assert reasons["colour"]["value"] == "red"
    assert reasons["colour"]["reason"].startswith("colour = red ")
    unseen = {t["feature"]: t for t in explained[2]["top"]}["colour"]
    assert unseen["value"] is None and unseen["reason"].startswith("colour missing ")
