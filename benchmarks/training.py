"""The default stack against its yardsticks, side by side, in one run:

    .venv/bin/python -m benchmarks.training [--races 5000] [--big-races 9500] [--time-limit 90]

- LETOR sample (../shared/data/letor): the stack vs a plain LGBMRanker() with default
  parameters, on the sample's own train/test split, NDCG@1/3/5/10 with both gains, and
  their paired per-query difference with a 95% bootstrap interval (the test split has 50
  queries); then the same over all 251 queries, 5-fold by query twice over, where a
  difference of 0.02 is no longer within the noise.
- Generated races: the stack vs the oracle (the true win probabilities) vs the market
  (odds-implied probabilities), each base and LGBMRanker() on the last fifth of the races
  by time: NDCG@1, top-1 hit rate, race log loss.
- Real tables that ship with scikit-learn (breast cancer, diabetes) and a generated binary
  table: the stack, each base and LightGBM's defaults on a held-out fifth.
- Wall time of `gallop train` on about 100,000 generated runners (features + jobs), and
  of the same with --time-limit.
Budgets are marked met or not; "no worse than" is judged by the paired 95% bootstrap
interval of the stack's advantage (not wholly below zero). Figures are printed, not
asserted.
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
from gallop.training import stacking
from gallop.training.config import STACK_DEFAULTS
from gallop.training.contract import Container
from gallop.training.jobdata import read_job_data
from gallop.training.metrics import auc, binary_metrics, ece, ndcg_at_k, ranking_metrics
from gallop.training.rows import Rows
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
    cuts = ("ndcg@5", "ndcg@10")
    not_below_best = []
    for k in (5, 10):
        best = max(margins, key=lambda name: dict(bases)[f"base {name}"][f"ndcg@{k}"])
        ahead = per_query_ndcg(stack, test_y, test_q, k) - per_query_ndcg(
            margins[best], test_y, test_q, k
        )
        interval_, met = paired(lambda i, a=ahead: float(a[i].mean()), len(test_q))
        not_below_best.append((f"@{k} vs {best} {interval_}", met))
    verdicts = [
        verdict("NDCG@5 and @10 >= LGBMRanker's", all(ours[m] >= plain[m] for m in cuts)),
        verdict(
            f"NDCG@5 and @10 no worse than the best base's{NOT_BELOW}: "
            + ", ".join(text for text, _ in not_below_best),
            all(met for _, met in not_below_best),
        ),
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
    the default stack (its exported graph) and by each of its bases (its margin, whether
    the stack weighs it or not), all trained on the same training queries."""
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
    (stack,) = session.run(["score"], {"features": test_rows})
    # every base, in the graph or not: its margin (order is all NDCG needs)
    container = Container(model.parent)
    bases = stacking.load_bases(
        container.channel("bases"), model.parent / "rejudged", read_job_data(container, None)
    )
    return ranker.predict(test[0]), stack[:, 0], {b.name: b.model.margin(test_rows) for b in bases}


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
    metrics = json.loads((model / "manifest.json").read_text())["metrics"]
    judged = held_out(model)
    rows = judged.rows
    sizes, share, relevance = rows.sizes, rows.share, rows.relevance
    assert sizes is not None
    known = rows.frame[["race_id", "horse_id", "odds"]].merge(
        truth, on=["race_id", "horse_id"], how="left", validate="one_to_one"
    )
    race = np.repeat(np.arange(len(sizes)), sizes)
    implied = 1.0 / known["odds"].to_numpy(float)
    market = implied / np.bincount(race, weights=implied)[race]
    oracle = known["true_win_probability"].to_numpy(float)
    table_rows = []
    for name, p in (("oracle (true probabilities)", oracle), ("market (odds-implied)", market)):
        table_rows.append((name, ranking_metrics(np.log(p), p, relevance, share, sizes)))
    # A plain LGBMRanker on the same features and grades: it ranks, it gives no chances.
    train_rows = Rows.of(train, built.manifest, training=True)
    ranker = lgb.LGBMRanker(verbose=-1).fit(
        train_rows.features, train_rows.relevance, group=train_rows.sizes
    )
    plain = ranker.predict(rows.features)
    table_rows.append(
        ("LGBMRanker() defaults", {f"ndcg@{k}": ndcg_at_k(plain, relevance, sizes, k) for k in KS})
    )
    table_rows += [(f"base {n}", v) for n, v in metrics.items() if n != "stack"]
    table_rows.append(("gallop stack", metrics["stack"]))
    loss = {
        name: values["race_log_loss"] for name, values in table_rows if "race_log_loss" in values
    }
    closed = (loss["market (odds-implied)"] - loss["gallop stack"]) / (
        loss["market (odds-implied)"] - loss["oracle (true probabilities)"]
    )
    # Against the best base: the training report's own comparison (one rule, one home).
    against = {m["metric"]: m for m in stacking.against_best_base(judged)["metrics"]}
    best = against["race_log_loss"]
    stack_score = judged.predictions["stack"]  # same order as the stack's score within races
    first = {
        name: per_group_ndcg(score, relevance, sizes, 1)
        for name, score in (("stack", stack_score), ("ranker", plain))
    }
    against_ranker = paired(
        lambda i: float((first["stack"] - first["ranker"])[i].mean()), len(sizes)
    )
    ahead = f"{best['advantage']:+.4f} [{best['low']:+.4f}, {best['high']:+.4f}]"
    table_rows.append((f"stack vs {best['base']} (race log loss, lower)", {"race_log_loss": ahead}))
    table_rows.append(("stack - LGBMRanker (ndcg@1)", {"ndcg@1": against_ranker[0]}))
    verdicts = [
        verdict(
            f"race log loss closes >= 35% of the market-oracle gap ({closed:.1%})", closed >= 0.35
        ),
        verdict(f"race log loss no worse than the best base's{NOT_BELOW}", best["not_below"]),
        verdict(f"NDCG@1 no worse than LGBMRanker's{NOT_BELOW}", against_ranker[1]),
    ]
    return table_rows, verdicts


# The budgets' rule: the stack is no worse when the 95% paired bootstrap interval of its
# advantage is not wholly below zero (a point estimate on a few hundred rows is noise).
NOT_BELOW = " (paired 95% interval not below zero)"


def held_out(model: Path) -> stacking.Judged:
    """The held-out rows and each model's predictions on them (the stack and its bases,
    each base with its own calibration), judged again from the run's work folder as the
    stack job judged them: the manifest keeps only the figures."""
    container = Container(model.parent)
    data = read_job_data(container, None)
    bases = stacking.load_bases(container.channel("bases"), model.parent / "rejudged", data)
    return stacking.judge(bases, data, {**STACK_DEFAULTS, "seed": 0})


def paired(advantage: Any, units: int, draws: int = 2000) -> tuple[str, bool]:
    """`advantage(index)`: how much better the stack is on those units (rows, races or
    queries, drawn with replacement); its value on all of them with a 95% bootstrap
    interval, and whether the interval is not wholly below zero."""
    index = np.random.default_rng(0).integers(0, units, (draws, units))
    low, high = np.percentile([advantage(i) for i in index], [2.5, 97.5])
    return f"{advantage(np.arange(units)):+.4f} [{low:+.4f}, {high:+.4f}]", bool(high >= 0)


def ece_floor(probability: np.ndarray, draws: int = 200) -> float:
    """The mean ECE that these probabilities show when they are exactly right (outcomes
    drawn from them): what sampling alone puts into ECE on this many rows (about 0.057 on
    500 rows, 0.013 on 10,000)."""
    rng = np.random.default_rng(0)
    outcomes = rng.random((draws, len(probability))) < probability
    return float(np.mean([ece(probability, drawn.astype(float)) for drawn in outcomes]))


def per_group_ndcg(
    score: np.ndarray, relevance: np.ndarray, sizes: np.ndarray, k: int
) -> np.ndarray:
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return np.array(
        [
            ndcg_at_k(score[s : s + n], relevance[s : s + n], np.array([n]), k)
            for s, n in zip(starts, sizes, strict=True)
        ]
    )


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
    judged = held_out(model)
    train_rows = Rows.of(train, built.manifest, training=True)
    x, y = judged.rows.features, judged.rows.target
    if task == "binary":
        plain = lgb.LGBMClassifier(verbose=-1).fit(train_rows.features, train_rows.target)
        baseline_prediction = plain.predict_proba(x)[:, 1]
        baseline = binary_metrics(baseline_prediction, y)
        key, sign = "auc", 1

        def score(p: np.ndarray, i: np.ndarray) -> float:
            return auc(p[i], y[i])

    else:
        plain = lgb.LGBMRegressor(verbose=-1).fit(train_rows.features, train_rows.target)
        baseline_prediction = plain.predict(x)
        baseline = {"rmse": float(np.sqrt(np.mean((baseline_prediction - y) ** 2)))}
        key, sign = "rmse", -1

        def score(p: np.ndarray, i: np.ndarray) -> float:
            return -float(np.sqrt(np.mean((p[i] - y[i]) ** 2)))

    bases = [(f"base {n}", v) for n, v in metrics.items() if n != "stack"]
    best = max(bases, key=lambda b: sign * b[1][key])[0].removeprefix("base ")
    stack = judged.predictions["stack"]

    def against(other: np.ndarray) -> tuple[str, bool]:
        return paired(lambda i: score(stack, i) - score(other, i), len(y))

    versus_best, versus_plain = against(judged.predictions[best]), against(baseline_prediction)
    better = "higher" if sign > 0 else "lower"
    verdicts = [
        verdict(f"{key} no worse than the best base's{NOT_BELOW}", versus_best[1]),
        verdict(f"{key} no worse than LGBM defaults'{NOT_BELOW}", versus_plain[1]),
    ]
    noise = {"ece": ece_floor(stack)} if task == "binary" else {}
    rows = [
        ("LGBM defaults", baseline),
        *bases,
        ("gallop stack", metrics["stack"]),
        (f"stack vs {best} ({key}, {better} is better; + the stack's)", {key: versus_best[0]}),
        (f"stack vs LGBM defaults ({key}; + the stack's)", {key: versus_plain[0]}),
    ]
    if noise:
        rows.append(("ECE of the stack's probabilities were they exact (noise floor)", noise))
    return rows, verdicts, test


def big(n_races: int, work: Path, time_limit: float) -> None:
    """`gallop train` on about 100,000 generated runners: as it is, then with a time limit
    below what that took, which the run must keep to."""
    data, _ = write_races(n_races, seed=11, out=work / "races.csv")
    runners = sum(1 for _ in data.open()) - 1
    seconds = train_command(data, work / "model")
    print(f"\n## gallop train on {runners:,} runners ({n_races:,} races): {seconds:.0f} s")
    print(verdict("at most 5 minutes on 2 cores", seconds <= 300))
    limited = train_command(data, work / "limited", "--time-limit", str(time_limit))
    print(f"\n## the same with --time-limit {time_limit:.0f}: {limited:.0f} s")
    print(verdict(f"at most 1.1 x {time_limit:.0f} s", limited <= 1.1 * time_limit))


def train_command(data: Path, out: Path, *extra: str) -> float:
    """Wall seconds of `gallop train`; each job's time is printed as it reports it."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gallop.cli", "train", "--data", str(data), "--spec", str(SPEC)]
        + ["--out", str(out), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    print("\n".join(line for line in done.stdout.splitlines() if "done in" in line))
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
    parser.add_argument(
        "--time-limit", type=float, default=90.0, help="seconds for the limited big run"
    )
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
        big(args.big_races, work / "big", args.time_limit)


if __name__ == "__main__":
    main()
