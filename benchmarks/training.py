"""The default stack against its yardsticks, side by side, in one run:

    .venv/bin/python -m benchmarks.training [--races 5000] [--big-races 9500]

- LETOR sample (../shared/data/letor): the stack vs a plain LGBMRanker() with default
  parameters, on the sample's own train/test split, NDCG@1/3/5/10, and their paired
  per-query difference with a 95% bootstrap interval (the test split has 50 queries);
  then the same over all 251 queries, 5-fold by query twice over, where a difference of
  0.02 is no longer within the noise.
- Generated races: the stack vs the oracle (the true win probabilities) vs the market
  (odds-implied probabilities) on the last fifth of the races by time: NDCG@1, top-1 hit
  rate, race log loss.
- A binary table (numeric features, no group, no time): AUC, log loss and ECE after
  calibration on the held-out fifth.
- Wall time of `gallop train` on about 100,000 generated runners (features + jobs).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.metrics import ndcg_score

from benchmarks.letor import LETOR, load_letor
from gallop.features.build import build_features
from gallop.ingest.validate import validate
from gallop.spec import DatasetSpec, load_spec
from gallop.synth.races import generate_races, write_races
from gallop.training.metrics import binary_metrics, ndcg_at_k, ranking_metrics
from gallop.training.outcomes import race_results
from gallop.training.runner import holdout_split, train_locally

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "shared" / "gallop" / "specs" / "races.yaml"
KS = (1, 3, 5, 10)


def quiet(_: str) -> None:
    pass


Letor = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, grades, query sizes


def letor_sample() -> tuple[Letor, Letor]:
    """The sample's own split, 201 training and 50 test queries, as wide as each other."""
    train_x, train_y, train_q = load_letor("rank.train")
    test = load_letor("rank.test", width=train_x.shape[1])
    train_x = np.pad(train_x, ((0, 0), (0, test[0].shape[1] - train_x.shape[1])))
    return (train_x, train_y, train_q), test


def letor(work: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The sample's own split: 201 training queries, 50 test queries."""
    train, (test_x, test_y, test_q) = letor_sample()
    baseline, stack, margins = letor_scores(train, (test_x, test_y, test_q), work)
    plain, ours = both_gains(baseline, test_y, test_q), both_gains(stack, test_y, test_q)
    # How sure is the difference, with 50 queries?
    gap = {
        f"{name}@{k}": interval(
            per_query_ndcg(stack, test_y, test_q, k, gain)
            - per_query_ndcg(baseline, test_y, test_q, k, gain)
        )
        for gain, name in (("exp", "ndcg"), ("linear", "lin"))
        for k in KS
    }
    bases = [(f"base {name}", both_gains(m, test_y, test_q)) for name, m in margins.items()]
    best = {m: max(v[m] for _, v in bases) for m in ("ndcg@5", "ndcg@10")}
    verdicts = [
        verdict("NDCG@5 and @10 >= LGBMRanker's", all(ours[m] >= plain[m] for m in best)),
        verdict("NDCG@5 and @10 >= the best base's", all(ours[m] >= best[m] for m in best)),
    ]
    rows = [("LGBMRanker() defaults", plain), *bases, ("gallop stack", ours)]
    return rows + [("stack - LGBMRanker", gap)], verdicts


def letor_cross_validated(
    work: Path, folds: int = 5, repeats: int = 2
) -> tuple[list[tuple[str, dict]], list[str]]:
    """All 251 queries, each a test query once per repeat (folds by query): NDCG@k per query
    averaged over the repeats, so the difference rests on 251 queries rather than 50."""
    (train_x, train_y, train_q), (test_x, test_y, test_q) = letor_sample()
    x, y, sizes = np.vstack([train_x, test_x]), np.r_[train_y, test_y], np.r_[train_q, test_q]
    query = np.repeat(np.arange(len(sizes)), sizes)
    cuts = [(gain, k) for gain in ("exp", "linear") for k in KS]
    per_query = {name: {c: np.zeros(len(sizes)) for c in cuts} for name in ("baseline", "stack")}
    for repeat in range(repeats):
        fold_of = np.random.default_rng(repeat).permutation(len(sizes)) % folds
        for fold in range(folds):
            held = fold_of[query] == fold
            train = (x[~held], y[~held], sizes[fold_of != fold])
            test = (x[held], y[held], sizes[fold_of == fold])
            scores = letor_scores(train, test, work / f"cv-{repeat}-{fold}")[:2]
            for name, score in zip(("baseline", "stack"), scores, strict=True):
                for gain, k in cuts:
                    ndcg = per_query_ndcg(score, test[1], test[2], k, gain)
                    per_query[name][(gain, k)][fold_of == fold] += ndcg / repeats
            print(
                f"  LETOR cross-validation: repeat {repeat + 1}, fold {fold + 1} done", flush=True
            )
    label = {"exp": "ndcg", "linear": "lin"}
    mean = {
        n: {f"{label[g]}@{k}": float(v[(g, k)].mean()) for g, k in cuts}
        for n, v in per_query.items()
    }
    difference = {c: per_query["stack"][c] - per_query["baseline"][c] for c in cuts}
    gap = {f"{label[g]}@{k}": interval(difference[(g, k)]) for g, k in cuts}
    verdicts = [
        verdict(
            "NDCG@5 and @10 >= LGBMRanker + 0.015 (LightGBM's gain)",
            all(difference[("exp", k)].mean() >= 0.015 for k in (5, 10)),
        ),
        verdict(
            "NDCG@5 and @10 not below LGBMRanker (linear gain)",
            all(difference[("linear", k)].mean() >= 0 for k in (5, 10)),
        ),
    ]
    rows = [
        ("LGBMRanker() defaults", mean["baseline"]),
        ("gallop stack", mean["stack"]),
        ("stack - LGBMRanker", gap),
    ]
    return rows, verdicts


def letor_scores(
    train: Letor, test: Letor, work: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Scores of the test documents by a plain LGBMRanker() with default parameters, by
    the default stack (its exported graph) and by each base in it (its margin), all
    trained on the same training queries."""
    ranker = lgb.LGBMRanker(verbose=-1).fit(train[0], train[1], group=train[2])
    names = [f"f{i}" for i in range(train[0].shape[1])]
    spec = DatasetSpec.model_validate(
        {
            "name": "letor",
            "task": "ranking",
            "target": "label",
            "group": "qid",
            "target_order": "descending",
            "features": names,
        }
    )

    def frame(part: Letor, offset: int) -> pd.DataFrame:
        qid = np.repeat(np.arange(len(part[2])) + offset, part[2])
        return pd.DataFrame(part[0], columns=names).assign(qid=qid, label=part[1])

    # Already numeric and typed; validation would refuse the sample's one-document query
    # and its repeated rows, which the baseline keeps: both sides see the same rows.
    both = pd.concat([frame(train, 0), frame(test, 10**6)])
    built = build_features(both.reset_index(drop=True), spec)
    is_test = built.frame["qid"] >= 10**6
    # The served stack learns from the rows it is given as held out too: it is given a
    # fifth of the training queries as those, and never sees the test queries.
    inner_train, inner_held = holdout_split(built.frame[~is_test], built.manifest)
    model = train_locally(inner_train, inner_held, built.manifest, work, progress=quiet)
    session = ort.InferenceSession(str(model / "model.onnx"))
    test_rows = built.frame[is_test][names].to_numpy(np.float32)
    stack, margins = session.run(["score", "margins"], {"features": test_rows})
    in_graph = json.loads((model / "manifest.json").read_text())["base_models"]
    bases = {b["model"]: margins[:, i] for i, b in enumerate(in_graph)}  # order is all NDCG needs
    return ranker.predict(test[0]), stack[:, 0], bases


def per_query_ndcg(
    score: np.ndarray, relevance: np.ndarray, sizes: np.ndarray, k: int, gain: str = "exp"
) -> np.ndarray:
    """NDCG@k of each query: LightGBM's (gain 2^rel - 1, a query with nothing relevant
    counts 1) or scikit-learn's ndcg_score (gain rel, ties averaged, nothing relevant 0)."""
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    out = []
    for s, n in zip(starts, sizes, strict=True):
        rel, got = relevance[s : s + n], score[s : s + n]
        if gain == "exp":
            out.append(ndcg_at_k(got, rel, np.array([n]), k))
        elif n == 1:  # scikit-learn refuses a single document; it is ranked right
            out.append(1.0 if rel[0] > 0 else 0.0)
        else:
            out.append(ndcg_score(rel[None, :], got[None, :], k=k))
    return np.array(out)


def both_gains(score: np.ndarray, relevance: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    return {
        f"{name}@{k}": float(per_query_ndcg(score, relevance, sizes, k, gain).mean())
        for gain, name in (("exp", "ndcg"), ("linear", "lin"))
        for k in KS
    }


def verdict(what: str, met: bool) -> str:
    return f"- budget: {what}: **{'met' if met else 'MISSED'}**"


def interval(differences: np.ndarray) -> str:
    """The mean per-query difference with a 95% bootstrap interval over the queries."""
    draws = np.random.default_rng(0).integers(0, len(differences), (2000, len(differences)))
    low, high = np.percentile(differences[draws].mean(axis=1), [2.5, 97.5])
    return f"{differences.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def races(n_races: int, work: Path) -> tuple[list[tuple[str, dict[str, float]]], list[str]]:
    spec = load_spec(SPEC)
    runners, truth = generate_races(n_races, seed=7)
    built = build_features(validate(runners.astype(str), spec).canonical, spec)
    train, test = holdout_split(built.frame, built.manifest)
    model = train_locally(train, test, built.manifest, work, progress=quiet)
    manifest = json.loads((model / "manifest.json").read_text())

    test = test.sort_values("race_id", kind="mergesort")
    test = test.merge(truth, on=["race_id", "horse_id"], how="left", validate="one_to_one")
    sizes = test.groupby("race_id", sort=False).size().to_numpy()
    share, relevance = race_results(test, built.manifest)
    implied = 1.0 / test["odds"].to_numpy(float)
    market = (
        implied
        / test.groupby("race_id", sort=False)["odds"]
        .transform(lambda o: (1.0 / o).sum())
        .to_numpy()
    )
    oracle = test["true_win_probability"].to_numpy(float)
    rows = []
    for name, p in (("oracle (true probabilities)", oracle), ("market (odds-implied)", market)):
        rows.append((name, ranking_metrics(np.log(p), p, relevance, share, sizes)))
    # A plain LGBMRanker on the same features and grades: it ranks, it gives no chances.
    features = built.manifest["features"]
    train = train.sort_values("race_id", kind="mergesort")
    train_sizes = train.groupby("race_id", sort=False).size().to_numpy()
    ranker = lgb.LGBMRanker(verbose=-1).fit(
        train[features].to_numpy(np.float32),
        race_results(train, built.manifest)[1],
        group=train_sizes,
    )
    plain = ranker.predict(test[features].to_numpy(np.float32))
    rows.append(
        ("LGBMRanker() defaults", {f"ndcg@{k}": ndcg_at_k(plain, relevance, sizes, k) for k in KS})
    )
    metrics = manifest["metrics"]
    rows += [(f"base {n}", v) for n, v in metrics.items() if n != "stack"]
    rows.append(("gallop stack", metrics["stack"]))
    loss = {name: values["race_log_loss"] for name, values in rows if "race_log_loss" in values}
    closed = (loss["market (odds-implied)"] - loss["gallop stack"]) / (
        loss["market (odds-implied)"] - loss["oracle (true probabilities)"]
    )
    best = min(v for n, v in loss.items() if n.startswith("base "))
    verdicts = [
        verdict(
            f"race log loss closes >= 35% of the market-oracle gap ({closed:.1%})", closed >= 0.35
        ),
        verdict("race log loss <= the best base's", loss["gallop stack"] <= best),
        verdict(
            "NDCG@1 >= LGBMRanker's",
            metrics["stack"]["ndcg@1"] >= rows[2][1]["ndcg@1"],
        ),
    ]
    return rows, verdicts


def chance(x: np.ndarray) -> np.ndarray:
    """The binary table's true probability of y = 1."""
    signal = (
        1.2 * x[:, 0] - 0.8 * x[:, 1] ** 2 + 0.6 * x[:, 2] * x[:, 3] + 0.4 * np.sin(3 * x[:, 4])
    )
    return 1 / (1 + np.exp(-signal))


def binary(work: Path, n_rows: int = 50_000) -> tuple[list[tuple[str, dict]], list[str]]:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n_rows, 8))
    y = (rng.random(n_rows) < chance(x)).astype(int)
    x[:, 5:][rng.random((n_rows, 3)) < 0.1] = np.nan  # missing values, in the noise columns
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).assign(y=y)
    rows, verdicts, test = against_defaults(frame, "binary", work)
    truth = chance(test[[f"x{i}" for i in range(8)]].to_numpy(np.float64))
    oracle = binary_metrics(truth, test["y"].to_numpy(float))
    return [("oracle (true probabilities)", oracle), *rows], verdicts


def bundled(name: str, work: Path) -> tuple[list[tuple[str, dict[str, float]]], list[str]]:
    """A real table that ships with scikit-learn: breast cancer (binary, 569 rows) or
    diabetes (regression, 442 rows); a seeded fifth held out, the same for every model."""
    loader = {"breast_cancer": load_breast_cancer, "diabetes": load_diabetes}[name]
    x, y = loader(return_X_y=True)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]).assign(y=y)
    task = "binary" if name == "breast_cancer" else "regression"
    rows, verdicts, _ = against_defaults(frame, task, work)
    return rows, verdicts


def against_defaults(
    frame: pd.DataFrame, task: str, work: Path
) -> tuple[list[tuple[str, dict[str, float]]], list[str], pd.DataFrame]:
    """A plain table (target y) through the default stack and LightGBM's defaults on the
    same seeded held-out fifth: the rows of the table, its budgets, the held-out rows."""
    spec = DatasetSpec.model_validate({"name": "table", "task": task, "target": "y"})
    built = build_features(validate(frame.astype(str), spec).canonical, spec)
    train, test = holdout_split(built.frame, built.manifest)
    model = train_locally(train, test, built.manifest, work, progress=quiet)
    metrics = json.loads((model / "manifest.json").read_text())["metrics"]
    columns = [c for c in frame.columns if c != "y"]
    train_x, test_x = train[columns].to_numpy(np.float32), test[columns].to_numpy(np.float32)
    if task == "binary":
        plain = lgb.LGBMClassifier(verbose=-1).fit(train_x, train["y"])
        p = plain.predict_proba(test_x)[:, 1]
        baseline = binary_metrics(p, test["y"].to_numpy(float))
        key, sign = "auc", 1
    else:
        plain = lgb.LGBMRegressor(verbose=-1).fit(train_x, train["y"])
        error = plain.predict(test_x) - test["y"].to_numpy(float)
        baseline = {"rmse": float(np.sqrt(np.mean(error**2)))}
        key, sign = "rmse", -1
    bases = [(f"base {n}", v) for n, v in metrics.items() if n != "stack"]
    stack = metrics["stack"][key]
    best = max(sign * v[key] for _, v in bases)
    verdicts = [
        verdict(f"{key} no worse than the best base's", sign * stack >= best),
        verdict(f"{key} no worse than LGBM defaults'", sign * (stack - baseline[key]) >= 0),
    ]
    return [("LGBM defaults", baseline), *bases, ("gallop stack", metrics["stack"])], verdicts, test


def big(n_races: int, work: Path) -> float:
    data, _ = write_races(n_races, seed=11, out=work / "races.csv")
    runners = sum(1 for _ in data.open()) - 1
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gallop.cli",
            "train",
            "--data",
            str(data),
            "--spec",
            str(SPEC),
            "--out",
            str(work / "model"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    print(f"\n## gallop train on {runners:,} runners ({n_races:,} races): {seconds:.0f} s")
    print("\n".join(line for line in done.stdout.splitlines() if "done in" in line))
    print(verdict("at most 5 minutes on 2 cores", seconds <= 300))
    return seconds


def table(title: str, rows: list[tuple[str, dict[str, Any]]], metrics: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| model | " + " | ".join(metrics) + " |")
    print("| --- |" + " ---: |" * len(metrics))
    for name, values in rows:
        cells = [_cell(values.get(m)) for m in metrics]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _cell(value: float | str | None) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else f"{value:.4f}"


def section(title: str, run: Any, metrics: list[str]) -> None:
    """One table with its budgets, and the wall time it took."""
    started = time.perf_counter()
    rows, verdicts = run()
    table(title, rows, metrics)
    print("\n".join(["", *verdicts, f"- wall time: {time.perf_counter() - started:.0f} s"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=5000)
    parser.add_argument("--big-races", type=int, default=9500, help="about 10.5 runners a race")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ndcgs = [f"{g}@{k}" for g in ("ndcg", "lin") for k in KS]
        if (LETOR / "rank.train").exists():
            section(
                "LETOR sample (its own split: 201 / 50 queries; ndcg: LightGBM's gain, "
                "lin: scikit-learn's)",
                lambda: letor(work / "letor"),
                ndcgs,
            )
            section(
                "LETOR sample (all 251 queries, 5-fold by query, twice)",
                lambda: letor_cross_validated(work / "letor-cv"),
                ndcgs,
            )
        else:
            print(f"LETOR sample not found at {LETOR}: skipped")
        section(
            f"Generated races ({args.races:,}; last fifth by time)",
            lambda: races(args.races, work / "races"),
            ["ndcg@1", "top1_hit_rate", "race_log_loss", "race_brier", "ece"],
        )
        section(
            "scikit-learn's breast cancer (binary; seeded fifth held out)",
            lambda: bundled("breast_cancer", work / "cancer"),
            ["auc", "log_loss", "brier", "ece"],
        )
        section(
            "scikit-learn's diabetes (regression; seeded fifth held out)",
            lambda: bundled("diabetes", work / "diabetes"),
            ["rmse", "mae", "coverage", "interval_width"],
        )
        section(
            "Generated binary table (50,000 rows; held-out fifth)",
            lambda: binary(work / "binary"),
            ["auc", "log_loss", "brier", "ece"],
        )
        big(args.big_races, work / "big")


if __name__ == "__main__":
    main()
