"""Every kind in the catalogue, fitted as a run fits it (bagged fold models on data with a
category among its features, and races with odds): its ONNX part scores as the model
does, and the serving side's explanation of it adds up to its margin."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from gallop.models.catalogue import CATALOGUE, Kind
from gallop.models.onnx_export import stack_to_onnx
from gallop.serving.explain import explainer_for
from gallop.training.bases import fit_phase
from gallop.training.config import BASE_DEFAULTS
from gallop.training.rows import Rows

TOLERANCE = 1e-5  # margin space, relative above 1
GOINGS = ["firm", "good", "heavy", "soft", "yielding"]
FEATURES = ["x0", "x1", "x2", "going", "odds_log_implied"]


def table(task: str, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Numbers, some missing, and a category's codes (some missing) that matter."""
    rng = np.random.default_rng(seed)
    n = 1200
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=FEATURES[:3])
    frame.loc[rng.random(n) < 0.05, "x1"] = np.nan
    codes = rng.integers(0, len(GOINGS), n).astype(float)
    codes[rng.random(n) < 0.05] = np.nan
    frame["going"] = codes
    signal = frame["x0"] - frame["x1"].fillna(0) ** 2 + np.isin(codes, [1, 3]) * (1 + frame["x2"])
    noisy = signal + rng.normal(scale=0.5, size=n)
    # a market that knows x0 alone (log of a chance); now and then no price
    frame["odds_log_implied"] = np.log(1 / (1 + np.exp(-frame["x0"]))) - 1.0
    frame.loc[rng.random(n) < 0.05, "odds_log_implied"] = np.nan
    manifest: dict[str, Any] = {
        "task": task,
        "features": FEATURES,
        "categorical": {"going": GOINGS},
        "identifiers": [],
        "group": None,
        "time": None,
        "target": "y",
        "target_order": None,
    }
    if task == "ranking":  # races of eight: position 1 for the highest noisy signal
        frame["race"] = np.repeat(np.arange(n // 8), 8)
        frame["y"] = (-noisy).groupby(frame["race"]).rank(method="first").astype(int)
        manifest.update(group="race", identifiers=["race"], target_order="ascending", odds="odds")
    elif task == "binary":
        frame["y"] = (noisy > np.median(noisy)).astype(int)
    else:
        frame["y"] = noisy
    return frame, manifest


def kinds() -> list[tuple[str, str]]:
    return [(name, task) for name, kind in CATALOGUE.items() for task in kind.tasks]


def fitted(kind: Kind, task: str) -> tuple[Any, Rows]:
    frame, manifest = table(task)
    rows = Rows.of(frame, manifest, training=True)
    settings = {**BASE_DEFAULTS, "folds": 3, "num_boost_round": 40, "early_stopping_rounds": 10}
    phase = fit_phase(kind, settings, rows, lambda line: None, "evaluation")
    return phase.model, Rows.of(table(task, seed=1)[0], manifest, training=False)


@pytest.mark.parametrize(("name", "task"), kinds())
def test_each_kind_is_exact_in_onnx_and_its_explanation_adds_up(name: str, task: str) -> None:
    # GIVEN a kind fitted on 3 folds, and rows it has not seen, with unseen-free codes
    # plus a missing, a negative and a never-seen code
    model, rows = fitted(CATALOGUE[name], task)
    assert (getattr(model, "offset", None) is not None) == CATALOGUE[name].from_market
    features = rows.features.copy()
    features[:30, 3], features[30:60, 3], features[60:90, 3] = np.nan, -1, len(GOINGS) + 3
    native = model.margin(features)

    # WHEN its ONNX part is the whole graph THEN the graph's score is its margin
    graph = stack_to_onnx([model], [1.0], 0.0, len(FEATURES))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    exported = session.run(["score"], {"features": features})[0][:, 0].astype(np.float64)
    assert np.max(np.abs(exported - native) / np.maximum(1, np.abs(native))) <= TOLERANCE
    if task == "ranking":  # the same order within every race
        for race in np.unique(rows.frame["race"]):
            at = (rows.frame["race"] == race).to_numpy()
            order = np.argsort(-native[at], kind="stable")
            assert np.all(np.diff(exported[at][order]) <= 1e-6), race

    # AND the serving side's explanation of it sums to its margin, as the trainer's does
    payload = model.explanation()
    parts = explainer_for({"kind": model.family}, payload).contributions(features)
    np.testing.assert_allclose(parts.sum(axis=1), native, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(parts[:, :-1], model.contributions(features), atol=1e-6)


def test_tree_kinds_split_on_the_category_as_a_set() -> None:
    # The parity above covers set-membership splits only if the trees make them.
    for name in ("binary", "regression", "lambdarank"):
        kind = CATALOGUE[name]
        model, _ = fitted(kind, kind.tasks[0])
        splits = [n for n in split_nodes(model.dump()) if n.get("decision_type") == "=="]
        assert splits and all(n["split_feature"] == FEATURES.index("going") for n in splits)


def split_nodes(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """Every split of a LightGBM-style dump's trees."""
    stack = [tree["tree_structure"] for tree in dump["tree_info"]]
    out = []
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            out.append(node)
            stack += [node["left_child"], node["right_child"]]
    return out


def test_the_markets_part_of_an_explanation_is_against_the_average_runner() -> None:
    from gallop.models.offset import Offset

    # GIVEN log chances of -1 and -3 and one runner without a price
    features = np.array([[0.0, -1.0], [0.0, -3.0], [0.0, np.nan]])
    offset = Offset.learn(features.astype(np.float32), feature=1)
    assert (offset.fill, offset.centre) == (-2.0, -2.0)  # the median, then the mean
    # WHEN its part joins the trees' parts (features, then the base value)
    parts = offset.explained(np.zeros((3, 3)), features)
    # THEN the favourite is raised, the outsider lowered, the unpriced one neither, and
    # the parts still sum to the margin (the trees' zero plus the offset's value)
    assert parts[:, 1].tolist() == [1.0, -1.0, 0.0]
    assert parts.sum(axis=1).tolist() == offset.values(features).tolist()


@pytest.mark.parametrize("favourites_win", [0.7, 1.0, 1.6])
def test_the_market_offset_weighs_the_odds_as_the_winners_do(favourites_win: float) -> None:
    from gallop.models.catalogue import CATALOGUE
    from gallop.models.lightgbm import offset_for

    # GIVEN 3,000 races of 8 whose winners are drawn from the market's chances raised to
    # a power: favourites win more (power > 1) or less often than the prices say
    rng = np.random.default_rng(5)
    races, field = 3000, 8
    log_implied = np.log(rng.dirichlet(np.ones(field), races)).ravel()
    chance = np.exp(favourites_win * log_implied).reshape(races, field)
    chance /= chance.sum(axis=1, keepdims=True)
    winner = (chance.cumsum(axis=1) > rng.random((races, 1))).argmax(axis=1)
    won = np.zeros((races, field))
    won[np.arange(races), winner] = 1.0
    features = np.column_stack([rng.normal(size=races * field), log_implied])
    manifest = {"odds": "odds", "features": ["x", "odds_log_implied"]}
    # WHEN the market kind's offset is learnt from them
    offset = offset_for(
        CATALOGUE["softmax_market"], manifest, features, won.ravel(), np.full(races, field)
    )
    # THEN the odds are weighed by that power (within sampling error), and a kind not
    # boosted from the market has no offset
    assert offset is not None and offset.feature == 1
    assert abs(offset.scale - favourites_win) < 0.1
    assert offset_for(CATALOGUE["lambdarank"], manifest, features, won.ravel(), None) is None


@pytest.mark.parametrize("name", ["regression", "catboost"])
def test_a_time_limited_base_fits_its_folds_within_its_share_by_the_estimate(name: str) -> None:
    from gallop.models.catalogue import FAMILIES
    from gallop.training.bases import fit_base
    from gallop.training.search import SUBSET_SECONDS, dataset_seconds, round_seconds

    # GIVEN a boosted kind whose folds would take many rounds, and a job budget for fitting
    # them that allows only a few by the estimate of a round's seconds (a LightGBM round
    # of 31 leaves, scaled by the family's cost)
    frame, manifest = table("regression")
    rows = Rows.of(frame, manifest, training=True)
    settings = {**BASE_DEFAULTS, "folds": 3, "num_boost_round": 2000, "learning_rate": 0.01}
    features = rows.features.shape[1]
    per_fit = round_seconds(len(rows) * 2 // 3, features, 31)
    cost = FAMILIES[CATALOGUE[name].family].round_cost
    # LightGBM bins the rows once; another family each fold's datasets (every row)
    binning = dataset_seconds(len(rows) * (1 if name == "regression" else 3), features)
    subsets = SUBSET_SECONDS * 3 * len(rows) * features  # each fold's training and its fold
    budget = {**settings, "fit_seconds": binning + subsets + 3 * per_fit * cost * 40.5}
    # WHEN it is fitted with and without that budget
    limited = fit_base(name, budget, rows, None, None, progress=lambda _: None)
    free = fit_base(name, settings, rows, None, None, progress=lambda _: None)
    # THEN each fold model keeps to the rounds the budget pays for; without it, it goes on
    assert max(limited.trace["final"]["iterations"]) == 40
    assert min(free.trace["final"]["iterations"]) > 40


def test_a_limit_too_short_for_the_search_skips_it_and_trials_take_the_fits_rounds() -> None:
    from gallop.training.bases import fit_base, fit_round_cap, search_budget

    frame, manifest = table("regression")
    rows = Rows.of(frame, manifest, training=True)
    settings = {**BASE_DEFAULTS, "folds": 3, "num_boost_round": 2000}
    said: list[str] = []
    # GIVEN a job whose search share is less than the job's own work beside it
    short = {**settings, "search_seconds": 1.0, "fit_seconds": 5.0}
    assert search_budget(CATALOGUE["regression"], short, rows, None) == 0.0
    # WHEN it is fitted THEN it skips the search, says so, and fits the kind's defaults
    fitted = fit_base("regression", short, rows, None, None, progress=said.append)
    assert fitted.trace["search"]["trials"] == [] and fitted.trace["search"]["chosen"] == {}
    assert any("search: skipped" in line for line in said)
    # GIVEN a search share that pays for trials, and fits the limit holds to a few rounds
    roomy = {**settings, "search_seconds": 6.0, "fit_seconds": 0.05}
    cap = fit_round_cap(CATALOGUE["regression"], roomy, rows, None)
    assert cap < 100
    # THEN no trial takes more rounds than the fold models will be allowed
    fitted = fit_base("regression", roomy, rows, None, None, progress=said.append)
    trials = fitted.trace["search"]["trials"]
    assert len(trials) > 2 and max(t["rounds"] for t in trials) <= cap
