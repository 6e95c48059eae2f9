"""Training entry points on the SageMaker container contract, in a fake /opt/ml tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gallop.features.build import build_features
from gallop.ingest.canonical import to_parquet
from gallop.ingest.validate import validate
from gallop.manifests import ModelManifest
from gallop.models.catalogue import DEFAULT_BASES
from gallop.spec import DatasetSpec
from gallop.synth.races import generate_races
from gallop.training.contract import JobError, decode
from gallop.training.metrics import ndcg_at_k
from gallop.training.runner import write_channel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def race_features(races_spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The features step's output for 400 generated races, as a train channel."""
    runners, _ = generate_races(400, seed=17)
    built = build_features(validate(runners.astype(str), races_spec).canonical, races_spec)
    channel = tmp_path_factory.mktemp("channel")
    write_channel(channel, built.frame, built.manifest)
    return channel


def opt_ml(
    tmp_path: Path,
    channel: Path | None,
    hyperparameters: dict[str, str],
    test: Path | None = None,
) -> Path:
    """A fake /opt/ml with the train channel (and a test channel: the jobs of one stack
    all see the same held-out rows)."""
    base = tmp_path / "opt" / "ml"
    if test is not None:
        shutil.copytree(test, base / "input" / "data" / "test")
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    train = base / "input" / "data" / "train"
    train.mkdir(parents=True)
    if channel is not None:
        for path in channel.iterdir():
            (train / path.name).write_bytes(path.read_bytes())
    return base


def run_job(job: str, base: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GALLOP_OPT_ML": str(base)}
    return subprocess.run(
        [sys.executable, "-m", f"training_jobs.{job}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def gallop_train(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`gallop train ARGS` in a new process, in `cwd` (relative paths as a user types them)."""
    command = [sys.executable, "-m", "gallop.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize(
    "model", ["lambdarank", "binary_win", "position_regression", "random_forest"]
)
def test_base_job_writes_out_of_fold_margins_and_a_refit_model(
    model: str, race_features: Path, tmp_path: Path
) -> None:
    # GIVEN a fake /opt/ml with string hyperparameters, as SageMaker passes them
    base = opt_ml(
        tmp_path,
        race_features,
        {"model": model, "folds": "4", "num_boost_round": "60", "seed": "3"},
    )
    # WHEN the job runs THEN it succeeds, prints metrics for metric definitions ...
    done = run_job("base", base)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#metric oof_ndcg@1=" in done.stdout
    # ... and writes the bag of fold models, one out-of-fold margin per runner, its record
    out = base / "model"
    record = json.loads((out / "base.json").read_text())
    assert record["model"] == model and record["settings"]["folds"] == 4
    oof = out_of_fold(out)
    features = pd.read_parquet(race_features / "features.parquet")
    assert len(oof) == len(features) and not oof["margin"].isna().any()
    # A race never straddles two folds.
    assert (oof.groupby("race_id")["fold"].nunique() == 1).all()
    assert sorted(oof["fold"].unique()) == [0, 1, 2, 3]
    # Out of fold, the model ranks clearly better than random orders of the same races.
    frame = features.sort_values("race_id", kind="mergesort")
    relevance = np.clip(4 - frame["position"].to_numpy(), 0, None)
    sizes = frame.groupby("race_id", sort=False).size().to_numpy()
    rng = np.random.default_rng(0)
    chance = np.mean([ndcg_at_k(rng.random(len(frame)), relevance, sizes, 1) for _ in range(20)])
    assert record["metrics"]["ndcg@1"] > chance + 0.08, (record["metrics"], chance)
    from gallop.models.lightgbm import LightGBMBase

    bag = LightGBMBase.load(out)
    assert len(bag.boosters) == 4  # the served model: the four fold models' mean
    assert {b.num_feature() for b in bag.boosters} == {
        len(json.loads((race_features / "manifest.json").read_text())["features"])
    }
    # Each fold model stopped early on its own fold, or took its forest's trees: never
    # more than the run allows
    assert max(record["trace"]["evaluation"]["iterations"]) <= 60
    assert not (base / "output" / "failure").exists()


def out_of_fold(model_dir: Path, part: str = "evaluation") -> pd.DataFrame:
    margins = pd.read_parquet(model_dir / "margins.parquet")
    return margins[margins["part"] == part].reset_index(drop=True)


def test_position_regression_learns_positions_in_races_and_grades_in_queries() -> None:
    from gallop.training.rows import Rows

    # Races: 1 for the winner down to 0 for the last, whatever the field size
    races = pd.DataFrame({"race": ["a", "a", "a", "b", "b"], "position": [2, 1, 3, 1, 2]})
    positions = {"task": "ranking", "group": "race", "target": "position", "features": []}
    positions["target_order"] = "ascending"
    assert Rows.of(races, positions, False).label("position").tolist() == [0.5, 1, 0, 1, 0]
    # Relevance grades: the grade itself, so a query of irrelevant documents has no "first"
    queries = pd.DataFrame({"qid": [1, 1, 1, 2, 2], "label": [0, 2, 1, 0, 0]})
    grades = {"task": "ranking", "group": "qid", "target": "label", "features": []}
    grades["target_order"] = "descending"
    assert Rows.of(queries, grades, False).label("position").tolist() == [0, 2, 1, 0, 0]


def test_single_row_groups_are_left_out_of_ranking_training_and_counted() -> None:
    from gallop.training.rows import Rows

    # GIVEN a query with a single document (a walkover, in racing) among two real ones
    queries = pd.DataFrame({"qid": [1, 1, 2, 3, 3], "label": [0, 2, 1, 1, 0]})
    manifest = {"task": "ranking", "group": "qid", "target": "label", "features": []}
    manifest["target_order"] = "descending"
    # WHEN rows are made for training THEN the lone row is left out, and counted
    training = Rows.of(queries, manifest, training=True)
    assert training.frame["qid"].tolist() == [1, 1, 3, 3] and training.left_out_groups == 1
    # AND rows to judge on keep it: it is scored like any other
    assert len(Rows.of(queries, manifest, training=False)) == 5


def test_time_ordered_folds_are_contiguous_blocks_of_races(
    race_features: Path, tmp_path: Path
) -> None:
    base = opt_ml(
        tmp_path, race_features, {"folds": "3", "split": '"time"', "num_boost_round": "20"}
    )
    done = run_job("base", base)
    assert done.returncode == 0, done.stderr[-2000:]
    oof = out_of_fold(base / "model")
    spans = oof.groupby("fold")["race_time"].agg(["min", "max"]).sort_index()
    assert (spans["max"].iloc[:-1].to_numpy() <= spans["min"].iloc[1:].to_numpy()).all()


@pytest.mark.parametrize(
    ("hyperparameters", "says"),
    [
        ({"model": "catboost"}, "model='catboost'"),  # no ranking kind
        ({"folds": "1"}, "folds=1 is not valid"),
        ({"learning_rate": "fast"}, "learning_rate='fast' is not valid"),
        ({"depth": "3"}, "unknown hyperparameters ['depth']"),
    ],
)
def test_a_bad_hyperparameter_fails_the_job_with_the_reason(
    hyperparameters: dict[str, str], says: str, race_features: Path, tmp_path: Path
) -> None:
    base = opt_ml(tmp_path, race_features, hyperparameters)
    done = run_job("base", base)
    assert done.returncode == 1
    assert says in (base / "output" / "failure").read_text()
    assert not (base / "model").exists() or not any((base / "model").iterdir())


def test_an_empty_channel_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    base = opt_ml(tmp_path, None, {})
    done = run_job("base", base)
    assert done.returncode == 1
    assert "channel 'train' is empty" in (base / "output" / "failure").read_text()


def test_hyperparameter_strings_are_decoded() -> None:
    assert [decode(v) for v in ["100", "0.05", "true", "[3, 5]", "lambdarank", 7]] == [
        100,
        0.05,
        True,
        [3, 5],
        "lambdarank",
        7,
    ]


def test_ndcg_matches_lightgbms_definition() -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(4)
    groups = np.array([5, 7, 4, 6])
    relevance = rng.integers(0, 4, groups.sum()).astype(float)
    relevance[:5] = 0  # a group with nothing relevant counts 1
    features = rng.normal(size=(groups.sum(), 3))
    train = lgb.Dataset(features, relevance, group=groups)
    valid = lgb.Dataset(features, relevance, group=groups, reference=train)
    result: dict = {}
    booster = lgb.train(
        {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [1, 3],
            "verbose": -1,
            "min_data_in_leaf": 1,
        },
        train,
        5,
        valid_sets=[valid],
        callbacks=[lgb.record_evaluation(result)],
    )
    scores = booster.predict(features)
    for k in (1, 3):
        expected = result["valid_0"][f"ndcg@{k}"][-1]
        assert ndcg_at_k(scores, relevance, groups, k) == pytest.approx(expected, abs=1e-9)


def test_the_same_inputs_give_the_same_model_bytes(race_features: Path, tmp_path: Path) -> None:
    hyperparameters = {"folds": "3", "num_boost_round": "40", "seed": "5"}
    first = opt_ml(tmp_path / "a", race_features, hyperparameters)
    second = opt_ml(tmp_path / "b", race_features, hyperparameters)
    for base in (first, second):
        assert run_job("base", base).returncode == 0
    for name in ("booster_0.txt", "booster_2.txt", "margins.parquet"):
        assert (first / "model" / name).read_bytes() == (second / "model" / name).read_bytes()


@pytest.fixture(scope="module")
def split_channels(
    races_spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Train on the earlier races, test on the last fifth (by time, so no look-ahead)."""
    runners, _ = generate_races(500, seed=23)
    built = build_features(validate(runners.astype(str), races_spec).canonical, races_spec)
    cut = built.frame["race_time"].quantile(0.8)
    channels = []
    for name, rows in (
        ("train", built.frame["race_time"] <= cut),
        ("test", built.frame["race_time"] > cut),
    ):
        channel = tmp_path_factory.mktemp(name)
        write_channel(channel, built.frame[rows], built.manifest)
        channels.append(channel)
    return channels[0], channels[1]


def test_stack_job_fits_evaluates_and_exports_one_graph_with_parity(
    split_channels: tuple[Path, Path], tmp_path: Path
) -> None:
    import tarfile

    import onnxruntime as ort

    train, test = split_channels
    # GIVEN two base jobs' outputs, one handed over as SageMaker does (model.tar.gz)
    bases = tmp_path / "bases"
    for i, model in enumerate(["lambdarank", "binary_win"]):
        base = opt_ml(
            tmp_path / model,
            train,
            {"model": model, "folds": "3", "num_boost_round": "50"},
            test=test,
        )
        assert run_job("base", base).returncode == 0
        target = bases / f"base-{i}"
        target.mkdir(parents=True)
        if i == 0:
            with tarfile.open(target / "model.tar.gz", "w:gz") as tar:
                for path in (base / "model").iterdir():
                    tar.add(path, arcname=path.name)
        else:
            for path in (base / "model").iterdir():
                (target / path.name).write_bytes(path.read_bytes())
    stack = opt_ml(tmp_path / "stack", train, {"meta_l2": "0.001"}, test=test)
    shutil.copytree(bases, stack / "input" / "data" / "bases")

    # WHEN the stack job runs
    done = run_job("stack", stack)
    assert done.returncode == 0, done.stderr[-2000:]

    # THEN it reports held-out metrics, for the stack and each base model side by side
    manifest = json.loads((stack / "model" / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "test" and max(manifest["onnx_parity"].values()) <= 1e-5
    assert set(manifest["metrics"]) == {"stack", "base_0_lambdarank", "base_1_binary_win"}
    assert {"ndcg@1", "top1_hit_rate", "race_log_loss", "race_brier"} <= set(
        manifest["metrics"]["stack"]
    )
    assert "#metric race_log_loss=" in done.stdout and "#metric ndcg_at_1=" in done.stdout
    # AND beside them, the stack against its best base on each metric, with the interval
    # of its advantage its verdict rests on, in the manifest and in the report
    against = manifest["against_best_base"]
    races = pd.read_parquet(test / "features.parquet")["race_id"].nunique()
    for m in against["metrics"]:
        best = min if m["metric"] == "race_log_loss" else max
        bases = [
            manifest["metrics"][b][m["metric"]] for b in ("base_0_lambdarank", "base_1_binary_win")
        ]
        assert m["best_base"] == pytest.approx(best(bases), rel=1e-9)
        assert m["stack"] == pytest.approx(manifest["metrics"]["stack"][m["metric"]], rel=1e-9)
        assert m["low"] <= m["advantage"] <= m["high"] and m["not_below"] == (m["high"] >= 0)
        assert 0 < m["units"] <= races
    assert [m["metric"] for m in against["metrics"]][:2] == ["race_log_loss", "ndcg@1"]
    report = (stack / "model" / "report.html").read_text()
    verdicts = {"not below" if m["not_below"] else "below" for m in against["metrics"]}
    assert 'id="against_best_base"' in report
    assert all(f"<td>{verdict}</td>" in report for verdict in verdicts)
    weights = [b["weight"] for b in manifest["base_models"]]
    assert all(w >= 0 for w in weights) and sum(weights) > 0
    # AND the one graph gives the stacked score of the test races, equal to the native stack
    features = pd.read_parquet(test / "features.parquet")[manifest["features"]].to_numpy(np.float32)
    session = ort.InferenceSession(
        str(stack / "model" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    score, margins = session.run(["score", "margins"], {"features": features})
    assert margins.shape == (len(features), len(weights))  # bases given no weight left out
    assert set(manifest["meta"]["weights"]) == {"lambdarank", "binary_win"}
    assert np.allclose(score[:, 0], margins @ np.array(weights), atol=1e-5)
    # AND it beats picking runners at random on the held-out races
    random_log_loss = float(
        np.mean(np.log(pd.read_parquet(test / "features.parquet").groupby("race_id").size()))
    )
    assert manifest["metrics"]["stack"]["race_log_loss"] < random_log_loss


def test_stack_job_without_base_outputs_fails_with_the_reason(
    split_channels: tuple[Path, Path], tmp_path: Path
) -> None:
    train, _ = split_channels
    stack = opt_ml(tmp_path, train, {})
    (stack / "input" / "data" / "bases").mkdir()
    (stack / "input" / "data" / "bases" / "notes.txt").write_text("nothing here")
    done = run_job("stack", stack)
    assert done.returncode == 1
    assert "holds no base job output" in (stack / "output" / "failure").read_text()


def test_gallop_train_runs_the_jobs_locally_and_leaves_the_artifact(tmp_path: Path) -> None:
    from gallop.synth.races import write_races

    data, _ = write_races(300, seed=31, out=tmp_path / "races.csv")
    out = tmp_path / "model"
    spec = ROOT / "shared" / "gallop" / "specs" / "races.yaml"
    # Every default base, each capped at 100 rounds: the defaults' own rounds (early
    # stopping at up to 2,000) are the demo's to run, not each test's.
    capped = ("--set", "num_boost_round=100")
    done = gallop_train(
        "--data", str(data), "--spec", str(spec), "--out", str(out), *capped, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # progress on stderr, results on stdout
    assert "base lambdarank: done" in done.stderr and "stack: done" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.onnx").stat().st_size > 0
    assert manifest["evaluated_on"] == "test"
    assert set(manifest["meta"]["weights"]) == set(DEFAULT_BASES["ranking"])
    # The served model rests on every row, the held-out ones too
    assert manifest["rows"]["served_model_fitted_on"] > manifest["rows"]["train"]
    assert "meta-learner weights:" in done.stdout


def test_gallop_train_refuses_invalid_data_with_the_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("race_id,race_time,horse_id,position\nR1,2024-01-01T12:00,H1,1\n")
    spec = ROOT / "shared" / "gallop" / "specs" / "races.yaml"
    done = gallop_train(
        "--data",
        str(bad),
        "--spec",
        str(spec),
        "--out",
        str(tmp_path / "m"),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert "missing_column" in done.stderr and "is not valid data" in done.stderr


def plain_table(task: str, rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Numeric features and a target: no group, no time."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    signal = 1.2 * x[:, 0] - 0.8 * x[:, 1] ** 2 + 0.5 * x[:, 2] * x[:, 3]
    x[rng.random(x.shape) < 0.05] = np.nan
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)])
    if task == "binary":
        return frame.assign(y=(rng.random(rows) < 1 / (1 + np.exp(-signal))).astype(int))
    return frame.assign(y=3 * signal + rng.normal(size=rows))


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_gallop_train_on_a_plain_table(task: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    # 1,500 rows, every default base capped at 200 rounds: uncapped, the default regression
    # bases run to ~8,000 trees on 3,000 rows (100 s)
    plain_table(task, rows=1500).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "spec.yaml").write_text(f"name: plain-{task}\ntask: {task}\ntarget: y\n")
    capped = ("--set", "num_boost_round=200")
    done = gallop_train(
        "--data", "data.csv", "--spec", "spec.yaml", "--out", "model", *capped, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert set(manifest) == set(ModelManifest.__annotations__)  # the type is what is written
    outputs = {"binary": ["probability"], "regression": ["value", "lower", "upper"]}[task]
    assert manifest["onnx_outputs"] == ["score", "margins", *outputs]

    assert set(manifest["meta"]["weights"]) == set(DEFAULT_BASES[task])
    in_graph = [b["model"] for b in manifest["base_models"]]  # the ones given weight
    assert in_graph and set(in_graph) <= set(DEFAULT_BASES[task])
    stack = manifest["metrics"]["stack"]
    if task == "binary":
        assert stack["auc"] > 0.7 and stack["ece"] < 0.08
    else:
        assert stack["r2"] > 0.8 and 0.85 <= stack["coverage"] <= 0.95
    # The graph answers for the rows as the manifest describes them.
    rows = plain_table(task, rows=50, seed=9)[manifest["features"]].to_numpy(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"))
    answers = session.run(outputs, {manifest["onnx_input"]: rows})
    if task == "binary":
        assert ((answers[0] > 0) & (answers[0] < 1)).all()
    else:
        value, lower, upper = answers
        assert (lower < value).all() and (value < upper).all()
    assert "<svg" in (tmp_path / "model" / "report.html").read_text()
    # AND the serving side answers the same, and explains it additively (TreeSHAP of a
    # boosted and a random-forest base, and the linear base's terms)
    from gallop.serving.model import LoadedModel
    from gallop.serving.predict import explain_body, predict_body

    served = LoadedModel.from_dir(tmp_path / "model")
    body = {"columns": manifest["features"], "data": np.where(np.isnan(rows), None, rows).tolist()}
    predictions = predict_body(served, body)["predictions"]
    for name, values in zip(outputs, answers, strict=True):
        assert [p[name] for p in predictions] == pytest.approx(values[:, 0].tolist(), abs=1e-6)
    few = {**body, "data": body["data"][:10]}  # TreeSHAP in numpy over every tree: 10 rows
    for explained, predicted in zip(
        explain_body(served, few, top_k=2)["explanations"], predictions[:10], strict=True
    ):
        total = explained["base_value"] + sum(explained["contributions"].values())
        # The graph's score is float32, summed over thousands of trees: relative where large
        assert total == pytest.approx(predicted["score"], rel=2e-6, abs=1e-5)


def test_the_same_inputs_and_time_limit_give_a_byte_identical_model(tmp_path: Path) -> None:
    from gallop.training.runner import holdout_split, train_locally

    spec = DatasetSpec.model_validate({"name": "plain", "task": "binary", "target": "y"})
    canonical = validate(plain_table("binary", rows=1000).astype(str), spec).canonical
    built = build_features(canonical, spec)
    train, test = holdout_split(built.frame, built.manifest)
    tags = {"run_id": "r1", "data_version": "v1", "code_version": "c1"}
    models = [
        train_locally(
            train,
            test,
            built.manifest,
            tmp_path / name,
            bases=("binary", "binary_et", "linear"),
            progress=lambda _: None,
            base_hyperparameters={"num_boost_round": 100, "time_limit": 20},
            stack_hyperparameters=tags,
        )
        for name in ("first", "second")
    ]
    first, second = ((m / "model.onnx").read_bytes() for m in models)
    assert first == second
    manifest = json.loads((models[0] / "manifest.json").read_text())
    assert {k: manifest[k] for k in tags} == tags
    # Each LightGBM base searched (the linear one has nothing to search), in its share of
    # the limit (3 bases two at a time are 2 waves sharing 35 % of 20 s) less the job's
    # own work beside it.
    boosted = set(manifest["meta"]["weights"]) - {"linear"}
    assert set(manifest["search"]) == boosted
    for search in manifest["search"].values():
        trials = search["trials"]
        assert 0 < search["budget_seconds"] < 3.5 and len(trials) > 2
        assert trials[0]["params"] == {}  # the kind's defaults are the first trial
        assert search["chosen"] == min(trials, key=lambda t: t["loss"])["params"]
        assert search["estimated_seconds"] <= search["budget_seconds"]
    assert "Hyperparameter search" in (models[0] / "report.html").read_text()


def test_a_bad_stack_hyperparameter_fails_the_job_with_the_reason(
    split_channels: tuple[Path, Path], tmp_path: Path
) -> None:
    stack = opt_ml(tmp_path, split_channels[0], {"calibration": '"sideways"'})
    done = run_job("stack", stack)
    assert done.returncode == 1
    assert "calibration='sideways' is not valid" in (stack / "output" / "failure").read_text()


def test_jobs_hold_the_latest_races_out_themselves_given_a_test_share(
    race_features: Path, tmp_path: Path
) -> None:
    """As on SageMaker: every job reads the whole feature set and splits it the same way."""
    share = {"test_share": "0.25", "folds": "3", "num_boost_round": "20"}
    base = opt_ml(tmp_path / "base", race_features, {**share, "model": '"lambdarank"'})
    assert run_job("base", base).returncode == 0
    oof = out_of_fold(base / "model")
    frame = pd.read_parquet(race_features / "features.parquet")
    latest = frame.groupby("race_id")["race_time"].min().sort_values(kind="mergesort")
    held = set(latest.index[300:])  # the last quarter of 400 races
    assert set(oof["race_id"]) == set(latest.index[:300])

    stack = opt_ml(tmp_path / "stack", race_features, {"test_share": "0.25"})
    shutil.copytree(base / "model", stack / "input" / "data" / "bases" / "base-0")
    done = run_job("stack", stack)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((stack / "model" / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "test"
    assert manifest["rows"]["evaluated"] == int(frame["race_id"].isin(held).sum())


def test_gallop_train_takes_the_bases_and_their_hyperparameters(tmp_path: Path) -> None:
    plain_table("regression", rows=800).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "spec.yaml").write_text("name: plain\ntask: regression\ntarget: y\n")
    command = ["--data", "data.csv", "--spec", "spec.yaml", "--out", "model"]
    bases = "linear,regression,xgboost,catboost"  # the optional families, loaded and exported
    chosen = ["--bases", bases, "--set", "num_boost_round=15", "--set", "folds=3"]
    chosen += ["--set", "coverage=0.8"]  # the stack job's: its intervals
    done = gallop_train(*command, *chosen, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert set(manifest["meta"]["weights"]) == {"linear", "regression", "xgboost", "catboost"}
    boosted = [b for b in manifest["base_models"] if b["model"] != "linear"]
    assert all(max(b["fit"]["trees"]) <= 15 for b in boosted)  # at most, each fold model
    assert manifest["meta"]["calibration"]["coverage"] == 0.8
    wrong = gallop_train(*command, "--bases", "lambdarank", cwd=tmp_path)
    assert wrong.returncode != 0 and "cannot be trained for a regression task" in wrong.stderr
    too_short = gallop_train(*command, "--time-limit", "0.5", cwd=tmp_path)
    assert too_short.returncode == 2 and "time_limit=0.5 is not valid" in too_short.stderr


def test_the_stack_job_refuses_margins_of_other_rows(race_features: Path, tmp_path: Path) -> None:
    """Margins align by channel row; the identifiers beside them catch a channel whose
    rows are not the ones the base job saw (here: the same rows, shuffled)."""
    base = opt_ml(tmp_path / "base", race_features, {"folds": "3", "num_boost_round": "10"})
    assert run_job("base", base).returncode == 0
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    frame = pd.read_parquet(race_features / "features.parquet").sample(frac=1.0, random_state=3)
    (shuffled / "features.parquet").write_bytes(to_parquet(frame))
    (shuffled / "manifest.json").write_bytes((race_features / "manifest.json").read_bytes())
    stack = opt_ml(tmp_path / "stack", shuffled, {})
    shutil.copytree(base / "model", stack / "input" / "data" / "bases" / "base-0")
    assert run_job("stack", stack).returncode == 1
    assert "do not cover the train rows" in (stack / "output" / "failure").read_text()


def binary_with_odds(rows: int, seed: int) -> pd.DataFrame:
    """A binary table with a foaling year (a large mean, a small spread) among its
    features and a bookmaker's odds on y = 1 (the true chance, less a 10% margin)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    year = 2018 + rng.integers(0, 4, rows)
    chance = 1 / (1 + np.exp(-(1.5 * x[:, 0] - x[:, 1] + 0.8 * (year - 2019.5))))
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2"]).assign(year=year)
    odds = np.round(1 / (chance * 1.1), 2).clip(1.01, 500)
    return frame.assign(odds=odds, y=(rng.random(rows) < chance).astype(int))


@pytest.fixture(scope="module")
def binary_jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and test channels of that table, and a boosted and a linear base job's output."""
    spec = DatasetSpec.model_validate(
        {"name": "odds", "task": "binary", "target": "y", "odds": "odds"}
    )
    root = tmp_path_factory.mktemp("binary")
    made: dict[str, Path] = {}
    for name, rows, seed in (("train", 3000, 1), ("test", 1500, 2), ("one_class", 300, 3)):
        table = binary_with_odds(rows, seed)
        if name == "one_class":
            table = table[table["y"] == 0]
        built = build_features(validate(table.astype(str), spec).canonical, spec)
        made[name] = root / name
        write_channel(made[name], built.frame, built.manifest)
    for test in (None, "test", "one_class"):  # the bases of a stack see its held-out rows
        bases = made[f"bases-{test}"] = root / f"bases-{test}"
        for i, model in enumerate(["binary", "linear"]):
            base = opt_ml(
                root / f"{model}-{test}",
                made["train"],
                {"model": model, "num_boost_round": "40"},
                test=made[test] if test else None,
            )
            done = run_job("base", base)
            assert done.returncode == 0, done.stderr[-2000:]
            shutil.copytree(base / "model", bases / f"base-{i}")
    return made


def stack_job(
    made: dict[str, Path], tmp_path: Path, test: str | None, hyperparameters: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    stack = opt_ml(tmp_path, made["train"], hyperparameters, test=made[test] if test else None)
    shutil.copytree(made[f"bases-{test}"], stack / "input" / "data" / "bases")
    return run_job("stack", stack), stack / "model"


def test_binary_isotonic_graph_keeps_a_years_linear_term_exact_and_bets_on_held_out_rows(
    binary_jobs: dict[str, Path], tmp_path: Path
) -> None:
    # WHEN the stack is fitted, isotonic-calibrated and tested on rows with odds
    done, model = stack_job(binary_jobs, tmp_path, "test", {"calibration": '"isotonic"'})
    # THEN the graph equals the native stack, its linear term of the year included
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((model / "manifest.json").read_text())
    assert set(manifest["onnx_parity"]) == {"score", "margins", "probability"}
    assert max(manifest["onnx_parity"].values()) <= 1e-5
    # AND the bets are those of the evaluation phase on the held-out rows (the served
    # graph is refit on them, so it cannot replay them; test_metrics works a run by hand):
    # one-unit stakes, and each bet beyond the winners there are is a lost unit
    test = pd.read_parquet(binary_jobs["test"] / "features.parquet")
    odds, won = test["odds"].to_numpy(float), test["y"].to_numpy(float)
    flat = manifest["betting"]["flat"]
    assert 0 < flat["bets"] == flat["turnover"] <= np.isfinite(odds).sum()
    winners = won == 1
    lost_at_least = max(0, flat["bets"] - int(winners.sum()))
    assert flat["profit"] <= float((odds - 1)[winners].sum()) - lost_at_least


def test_a_stack_evaluated_out_of_fold_checks_parity_on_its_refit_bases(
    binary_jobs: dict[str, Path], tmp_path: Path
) -> None:
    done, model = stack_job(binary_jobs, tmp_path, None, {})
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["evaluated_on"] == "out-of-fold"
    assert max(manifest["onnx_parity"].values()) <= 1e-5


def test_a_metric_with_no_value_is_null_in_the_manifest(
    binary_jobs: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN test rows of one class only: their AUC is undefined
    done, model = stack_job(binary_jobs, tmp_path, "one_class", {})
    assert done.returncode == 0, done.stderr[-2000:]
    text = (model / "manifest.json").read_text()
    assert "NaN" not in text  # JSON has no NaN, and Postgres' json type refuses it
    assert json.loads(text)["metrics"]["stack"]["auc"] is None


def test_the_parity_check_refuses_a_graph_whose_calibration_is_off() -> None:
    from gallop.models.linear import LinearModel
    from gallop.models.onnx_export import stack_to_onnx
    from gallop.models.stack import Meta
    from gallop.training.rows import Rows
    from gallop.training.stacking import check_parity

    # GIVEN one linear base (margin = x) and an isotonic curve with steps at 0 and 1
    base = LinearModel(np.zeros(1), np.ones(1), np.ones(1), 0.0, np.full(1, -9.0), np.full(1, 9.0))
    curve = {"kind": "isotonic", "thresholds": [-9.0, 0.0, 1.0], "values": [0.1, 0.5, 0.9]}
    meta = Meta(np.ones(1), 0.0, curve)
    x = np.array([[-2.0], [0.5], [3.0], [1e-9]], dtype=np.float32)  # the last is on a step
    rows = Rows(pd.DataFrame({"x": x[:, 0]}), {"task": "binary", "target": "x", "features": ["x"]})
    outputs = ["score", "margins", "probability"]
    margins = x.astype(np.float64)

    def exported(values: list[float]) -> bytes:
        graph = stack_to_onnx([base], [1.0], 0.0, 1, {**curve, "values": values})
        return graph.SerializeToString()

    # WHEN the graph is the stack THEN it passes, the row on a step not counted against it
    same = check_parity(exported([0.1, 0.5, 0.9]), meta, margins, rows, outputs)
    assert same["probability"] < 1e-7  # the values as float32
    # WHEN its curve differs from the native one THEN the job is refused, naming the output
    with pytest.raises(JobError, match="ONNX probability differs"):
        check_parity(exported([0.1, 0.6, 0.9]), meta, margins, rows, outputs)


def test_the_reported_importance_is_the_mean_size_of_the_served_explanations(
    binary_jobs: dict[str, Path], tmp_path: Path
) -> None:
    from gallop.serving.explain import explainer_for

    # WHEN a stack of a bagged boosted base and a linear one is judged on held-out rows
    done, model = stack_job(binary_jobs, tmp_path, "test", {})
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((model / "manifest.json").read_text())
    # THEN each feature's importance is the mean |part| the served explanations give it
    # on those rows (TreeSHAP of the served trees, linear terms), not a split gain
    test = pd.read_parquet(binary_jobs["test"] / "features.parquet")
    features = test[manifest["features"]].to_numpy(np.float32)
    total = np.zeros((len(features), len(manifest["features"]) + 1))
    for base in manifest["base_models"]:
        payload = json.loads((model / base["explain"]).read_text())
        total += base["weight"] * explainer_for(base, payload).contributions(features)
    expected = dict(zip(manifest["features"], np.abs(total[:, :-1]).mean(axis=0), strict=True))
    reported = {row["feature"]: row["mean_abs_shap"] for row in manifest["top_features"]}
    assert reported and reported == pytest.approx({k: expected[k] for k in reported}, rel=1e-6)
    assert list(reported) == sorted(reported, key=lambda k: -expected[k])
