"""gallop demo: the whole path on generated races, told stage by stage: generate, ingest
(and a broken file), features, train, promote, append the latest results, then predict
and explain a held-back race from the fresh form."""

from __future__ import annotations

import argparse
import builtins
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from gallop.cli.common import (
    SHIPPED_SPEC,
    UserError,
    add_json,
    add_state_dir,
    api_client,
    emit_json,
    state_dir,
)
from gallop.cli.ingest import ingest_file, print_version
from gallop.layout import APPEND
from gallop.manifests import kind_of_metrics_key

# What the form line of the demo shows of a runner: its career, its last run, its rest.
FORM = {
    "horse_runs": "runs",
    "horse_position_last_3": "last finish",
    "horse_days_since_last": "days since its last run",
}


def add(commands: Any) -> None:
    p = commands.add_parser(
        "demo", help="the whole path on generated races: ingest, train, promote, predict"
    )
    p.add_argument("--races", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fresh", action="store_true", help="start with empty local state")
    p.add_argument(
        "--days",
        type=int,
        default=0,
        help="instead: the champion's life over N days of races (cards, results, drift, a "
        "retrain, the challenger in shadow, the comparison, an approval); 8 show it all",
    )
    add_state_dir(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The story goes to stdout; with --json it goes to stderr and stdout gets a summary."""
    import pandas as pd

    from gallop.serving.card import card_from_rows
    from gallop.spec import load_spec
    from gallop.synth.mistakes import broken_copy
    from gallop.synth.races import write_races

    story = sys.stderr if args.json else sys.stdout
    say = functools.partial(builtins.print, file=story, flush=True)
    state = state_dir(args)
    if args.days < 0:
        raise UserError("--days must be at least 1")
    if args.days:
        from gallop.cli.demo_days import run_days

        return run_days(args, state / "demo-days", _Stages(args.days + 4, say), say)
    work = state / "demo"
    stage = _Stages(9, say)
    stage(f"generating {args.races:,} races (seed {args.seed}); the last one is held back")
    generated, truth_path = write_races(args.races, args.seed, work / "generated.csv")
    # The last race is held back: it is the upcoming race the card is for. The races since
    # one of its runners last ran are the latest results, appended after training.
    runners = pd.read_csv(generated, dtype=str, keep_default_na=False)
    upcoming = runners["race_id"] == runners["race_id"].iloc[-1]
    held_back = runners[upcoming]
    since = _latest_results_since(runners[~upcoming], held_back)
    latest = ~upcoming & (runners["race_time"].str[:10] >= since)
    data, day = work / "races.csv", work / "latest.csv"
    runners[~upcoming & ~latest].to_csv(data, index=False, lineterminator="\n")
    runners[latest].to_csv(day, index=False, lineterminator="\n")
    spec = load_spec(SHIPPED_SPEC)
    card = card_from_rows(held_back, spec)
    card_path = work / "card.json"
    card_path.write_text(json.dumps({"rows": card}, indent=2) + "\n")
    broken = broken_copy(data, work / "races-broken.csv")

    stage("starting the local stack (moto S3/SQS, ingest and features pollers, API)")
    with api_client(args) as client:
        stage("ingesting through the API: presigned POST → S3 → SQS → ingest")
        status, version = ingest_file(client, spec, data)
        print_version(version, story)
        if status != "VALID":
            return 1
        stage("and a file with mistakes in it, to show a validation report")
        bad_status, bad_version = ingest_file(client, spec, broken)
        print_version(bad_version, story)

        stage("features: computed when the version became VALID")
        feature_set = client.wait_for_features(spec.name, version["version_id"])
        if feature_set["status"] != "READY":
            say(f"features FAILED: {feature_set['reason']}")
            return 1
        say(
            f"READY: {feature_set['row_count']:,} rows x {len(feature_set['features'])} "
            f"float32 features in {feature_set['data_key']}"
        )

        stage("training the stack: POST /v1/training-runs, then GET it until it ends")
        run = _train_through_api(client, spec.name, version["version_id"], stage, say)
        if run["status"] != "SUCCEEDED":
            say(f"training FAILED: {run['reason']}")
            return 1
        model_id = run["model"]["model_id"]

        stage(f"promoting {model_id} to champion: POST /v1/models/{{id}}/promote")
        promoted = client.promote(model_id, "champion")
        say(f"champion → {promoted['model_id']} (before: {promoted.get('previous') or 'none'})")

        latest_rows = runners[latest]
        stage(
            f"appending the latest results ({latest_rows['race_id'].nunique()} races, "
            f"{len(latest_rows)} runners since {latest_rows['race_time'].min()[:10]}): "
            "mode append, then features from the snapshot plus the new rows"
        )
        day_status, appended = ingest_file(client, spec, day, mode=APPEND)
        print_version(appended, story)
        if day_status != "VALID":
            return 1
        fresh = client.wait_for_features(spec.name, appended["version_id"])
        say(f"features {fresh['status']}: {_built(fresh)}")

        stage(
            f"predicting the held-back race from its card ({len(card)} runners): "
            "POST /v1/predict, then POST /v1/explain (top 3 reasons)"
        )
        predicted = client.predict("champion", card)
        explained = client.explain("champion", card, top_k=3)
        as_of = predicted["features_as_of"]
        say(
            f"features_as_of: version {as_of['version_id']} ({as_of['snapshot']} snapshot), "
            f"newest race {as_of['data_end']}"
        )
        stale = client.predict("champion", card, snapshot="training")
        before = client.card_features(spec.name, version["version_id"], card)
        after = client.card_features(spec.name, appended["version_id"], card)
    truth = pd.read_csv(truth_path, dtype={"true_win_probability": float})
    _print_predictions(held_back, predicted, explained, truth, say)
    _print_form_change(held_back, latest_rows, before, after, stale, predicted, say)
    report = _print_report(run, state, say)
    say(f"\ndone in {stage.elapsed:.1f} s; state in {state}")
    say(f"next: gallop predict --model champion --input {card_path} --explain")
    if args.json:
        emit_json(
            {
                "version_id": version["version_id"],
                "appended_version_id": appended["version_id"],
                "features_as_of": as_of,
                "rejected_version_id": bad_version["version_id"],
                "run_id": run["run_id"],
                "model_id": model_id,
                "metrics": run["metrics"],
                "card": str(card_path),
                "predictions": predicted["predictions"],
                "explanations": explained["explanations"],
                "report": str(report) if report else None,
                "report_url": run["report_url"],
                "seconds": round(stage.elapsed, 1),
            }
        )
    return 0 if bad_status == "REJECTED" else 1


def _latest_results_since(history: Any, card: Any) -> str:
    """The day one of the card's runners last ran: the races from that day on are the
    results that change the card's form, appended after training."""
    ran = history[history["horse_id"].isin(card["horse_id"])]
    return str((ran if len(ran) else history)["race_time"].max()[:10])


def _built(feature_set: dict[str, Any]) -> str:
    """How the features were built: from the parent's snapshot and the new rows, or whole."""
    if feature_set["status"] != "READY":
        return str(feature_set.get("reason"))
    build = feature_set.get("build") or {}
    rows = f"{feature_set['row_count']:,} rows"
    if build.get("kind") == "incremental":
        return f"{rows}, extended from {build['parent_version_id']}'s snapshot by the new rows"
    return f"{rows}, built whole" + (f" ({build['reason']})" if build.get("reason") else "")


def _print_form_change(
    card: Any,
    latest: Any,
    before: dict[str, Any],
    after: dict[str, Any],
    stale: dict[str, Any],
    fresh: dict[str, Any],
    say: Any,
) -> None:
    """One runner of the card that ran in the appended races: its form from the training
    snapshot beside its form now, and what that did to its chance."""
    at = {name: i for i, name in enumerate(after["features"])}
    for i, runner in enumerate(card.to_dict("records")):
        ran = latest[latest["horse_id"] == runner["horse_id"]]
        if ran.empty:
            continue
        last = ran.sort_values("race_time").iloc[-1]
        say(
            f"\n{runner['horse_id']} ran again after the training data ended "
            f"({last['race_time'][:10]}, finished {last['position']}): its form on the card"
        )
        for name, label in FORM.items():
            if name in at:
                old, new = before["rows"][i][at[name]], after["rows"][i][at[name]]
                say(f"  {label:<24}{_number(old):>8} → {_number(new)}")
        say(
            f"  win chance {100 * stale['predictions'][i]['win_probability']:.1f}% from the "
            f"training snapshot → {100 * fresh['predictions'][i]['win_probability']:.1f}% now"
        )
        return


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}".removesuffix(".0")


class _Stages:
    """Announces each stage of a long command with the time since the command began."""

    def __init__(self, total: int, say: Any) -> None:
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.say = say

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        self.count += 1
        self.say(f"\n[{self.count}/{self.total} at {self.elapsed:5.1f} s] {message}")


def _train_through_api(
    client: Any, dataset: str, version_id: str, stage: _Stages, say: Any
) -> dict[str, Any]:
    """Start (or find) the run on the version and follow it, telling each new stage."""
    started = client.start_training_run(dataset, version=version_id)
    say(f"run {started['run_id']}: {started['status']}")
    if started["status"] == "SUCCEEDED":
        say("  the same run (same data, config and code) already succeeded: not trained again")
    seen: list[tuple[str, str | None]] = []

    def progress(run: dict[str, Any]) -> None:
        now = (run["status"], run["stage"])
        if not seen or seen[-1] != now:
            seen.append(now)
            say(f"  {stage.elapsed:5.1f} s  {run['status']}: {run['stage'] or ''}")

    run: dict[str, Any] = client.wait_for_training_run(started["run_id"], progress=progress)
    if run["status"] == "SUCCEEDED":
        metrics = run["metrics"] or {}
        shown = ", ".join(
            f"{name} {metrics[name]:.3f}"
            for name in ("ndcg@1", "top1_hit_rate", "race_log_loss")
            if name in metrics
        )
        say(f"model {run['model']['model_id']}; on the held-out races: {shown}")
        _print_against_best_base(client.model(run["model"]["model_id"]), say)
    return run


def _print_against_best_base(model: dict[str, Any], say: Any) -> None:
    """The stack beside its best base on each metric, with the interval the verdict rests on."""
    against = model.get("against_best_base")
    if not against:
        return
    say(f"the stack against its best base on each metric ({against['unit']}s paired):")
    for m in against["metrics"]:
        verdict = "not below" if m["not_below"] else "BELOW"
        say(
            f"  {m['metric']:<14} stack {m['stack']:.4f}  {kind_of_metrics_key(m['base'])} "
            f"{m['best_base']:.4f}  advantage {m['advantage']:+.4f} "
            f"[{m['low']:+.4f}, {m['high']:+.4f}]: {verdict}"
        )


def _print_predictions(
    rows: Any, predicted: dict[str, Any], explained: dict[str, Any], truth: Any, say: Any
) -> None:
    """The held-back race as the model saw it before the off, beside what happened."""
    race = rows["race_id"].iloc[0]
    chance = truth[truth["race_id"] == race].set_index("horse_id")["true_win_probability"]
    say(
        f"\nthe held-back race {race} ({rows['race_time'].iloc[0]}) by {predicted['model_id']}, "
        "from its card alone, beside the result and the generator's true chances:"
    )
    lines = []
    for runner, prediction, explanation in zip(
        rows.to_dict("records"),
        predicted["predictions"],
        explained["explanations"],
        strict=True,
    ):
        top = explanation["top"]
        lines.append(
            (
                int(prediction["rank"]),
                runner["horse_id"],
                100 * prediction["win_probability"],
                _percent(prediction.get("place_probability")),
                runner["position"],
                100 * chance[runner["horse_id"]],
                top[0]["reason"] if top else "—",
            )
        )
    say(
        f"{'runner':<9}{'win %':>7}{'place %':>9}{'rank':>6}{'finish':>8}{'true win %':>12}"
        "  top reason"
    )
    for rank, horse, win, place, finish, true_win, reason in sorted(lines):
        say(f"{horse:<9}{win:>7.1f}{place:>9}{rank:>6}{finish:>8}{true_win:>12.1f}  {reason}")
    winner = next((line for line in lines if line[4] == "1"), None)
    if winner is not None:
        say(
            f"the winner, {winner[1]}, was ranked {winner[0]} with {winner[2]:.1f}% "
            f"(true chance {winner[5]:.1f}%)"
        )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _print_report(run: dict[str, Any], state: Path, say: Any) -> Path | None:
    """The run's HTML report: the file the S3 mirror keeps (on disk before the model
    was registered), and the presigned link."""
    found = sorted((state / "s3").glob(f"*/{run['model']['report_key']}"))
    say("\ntraining report:")
    if found:
        say(f"  file: {found[0].resolve()}")
    say(f"  url (while the local stack runs): {run['report_url']}")
    return found[0].resolve() if found else None
