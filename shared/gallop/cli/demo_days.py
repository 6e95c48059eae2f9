"""gallop demo --days N: the champion's life day by day, on generated races.

Day 0: the champion is trained on the oldest races only (the model a user started with),
the races since are appended, and the dataset gets its policies: the challenger scores
every race in shadow; a drift or live-quality alarm of the champion retrains. Each demo
day is then the next races: their cards are scored in the morning (and captured), their
results appended in the evening, and the monitor runs: live figures, drift and the alarm,
the retrain that makes a challenger, the comparison on the races both models scored, the
approval request it opens, which the demo approves with its key; then the alias history.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from gallop.cli.common import SHIPPED_SPEC, Failed
from gallop.cli.ingest import ingest_file
from gallop.layout import APPEND, REPLACE
from gallop.renewal.outcome import RUNNING

# The champion knows only the oldest quarter of the history: later, the horses' careers
# are further on (drift), and a retrain has four times the races to learn from.
CHAMPION_SHARE = 0.25
RACES_PER_DAY = 75  # 300 paired races (the comparison's default minimum) take four days
SHOWN = {"race_log_loss": "race log loss", "ndcg@1": "NDCG@1", "top1_hit_rate": "top-1 hits"}


def run_days(args: Any, work: Path, stage: Any, say: Any) -> int:
    """The days' story (see the module's docstring); `stage` announces each stage."""
    from gallop.cli.common import api_client
    from gallop.spec import load_spec
    from gallop.synth.races import generate_races

    spec = load_spec(SHIPPED_SPEC)
    work.mkdir(parents=True, exist_ok=True)
    stage(
        f"generating {args.races:,} races of history and {args.days} days of "
        f"{RACES_PER_DAY} races (seed {args.seed})"
    )
    runners, _ = generate_races(args.races + args.days * RACES_PER_DAY, seed=args.seed)
    order = runners["race_id"].drop_duplicates().tolist()
    oldest = set(order[: int(args.races * CHAMPION_SHARE)])
    since = set(order[len(oldest) : args.races])
    days = [
        set(order[args.races + d * RACES_PER_DAY : args.races + (d + 1) * RACES_PER_DAY])
        for d in range(args.days)
    ]

    stage("starting the local stack (moto S3/SQS, pollers, API)")
    with api_client(args) as client:
        stage(f"day 0: the champion, trained on the oldest {len(oldest):,} races only")
        version = _ingest(client, spec, runners, oldest, work / "oldest.csv", mode=REPLACE)
        champion = _train(client, spec.name, version, say)
        client.promote(champion, "champion", reason="the first model")
        say(f"champion → {champion}")
        _ingest(client, spec, runners, since, work / "since.csv", mode=APPEND)
        say(f"the {len(since):,} races run since are appended; the champion has not seen them")
        client.put_traffic(spec.name, "shadow", shadow_share=1.0)
        client.put_retraining(spec.name, on_alarm=True)
        say(
            "policies: a challenger scores every race in shadow; a drift or live-quality "
            "alarm of the champion retrains, and the new model becomes the challenger"
        )
        for day, races in enumerate(days, start=1):
            _one_day(client, spec, runners, day, races, work, stage, say)
        stage("the alias history (GET /v1/datasets/{name}/aliases/history)")
        for line in reversed(client.alias_history(spec.name)):
            moved = f"{line['from_model'] or '—'} → {line['to_model'] or '—'}"
            say(
                f"  {line['at'][:19]}  {line['alias']:<10} {line['action']:<12} {moved}  "
                f"by {line['actor']}: {line['reason'] or ''}"
            )
    say(f"\ndone in {stage.elapsed:.1f} s")
    return 0


def _one_day(
    client: Any,
    spec: Any,
    runners: Any,
    day: int,
    races: set[str],
    work: Path,
    stage: Any,
    say: Any,
) -> None:
    """Morning: the day's cards scored; evening: the results appended and the monitor
    run; then any approval request the comparison opened is decided."""
    from gallop.serving.card import card_from_rows

    rows = runners[runners["race_id"].isin(races)]
    stage(f"day {day}: {len(races)} races, {rows['race_time'].min()[:10]} on")
    before = client.aliases(spec.name)
    answered: Counter[str] = Counter()
    for _, race in rows.groupby("race_id", sort=False):
        reply = client.predict("champion", card_from_rows(race, spec), dataset=spec.name)
        answered[reply["model_id"]] += 1
    shadow = before.get("challenger")
    say(
        "  morning: the cards answered by "
        + ", ".join(f"{model} ({n} races)" for model, n in answered.items())
        + (f"; challenger {shadow} scored each in shadow" if shadow else "")
    )
    _ingest(client, spec, runners, races, work / f"day-{day}.csv", mode=APPEND)
    say("  evening: the results appended (features extended from the snapshot)")
    time.sleep(0.5)  # capture's sender: a request's records leave within milliseconds
    checked = client.check_monitoring(spec.name)
    _say_checks(checked, before, say)
    for renewal in checked.get("renewals") or []:
        _say_renewal(client, spec.name, renewal, say)
    for approval in client.approvals(spec.name, status="PENDING"):
        _approve(client, approval, say)


def _ingest(client: Any, spec: Any, runners: Any, races: set[str], path: Path, mode: str) -> str:
    """The races' rows uploaded (whole, or appended); their version id once its features
    are READY."""
    runners[runners["race_id"].isin(races)].to_csv(path, index=False, lineterminator="\n")
    status, version = ingest_file(client, spec, path, mode=mode)
    if status != "VALID":
        raise Failed(f"{path.name} was {status}: {version.get('report')}")
    built = client.wait_for_features(spec.name, version["version_id"])
    if built["status"] != "READY":
        raise Failed(f"features of {version['version_id']}: {built.get('reason')}")
    return str(version["version_id"])


def _train(client: Any, dataset: str, version_id: str, say: Any) -> str:
    started = client.start_training_run(dataset, version=version_id)
    run: dict[str, Any] = client.wait_for_training_run(started["run_id"])
    if run["status"] != "SUCCEEDED":
        raise Failed(f"training {run['status']}: {run['reason']}")
    metrics = run["metrics"] or {}
    shown = ", ".join(f"{label} {metrics[m]:.3f}" for m, label in SHOWN.items() if m in metrics)
    say(f"model {run['model']['model_id']}; on its held-out races: {shown}")
    return str(run["model"]["model_id"])


def _say_checks(checked: dict[str, Any], aliases: dict[str, Any], say: Any) -> None:
    """Each model's live figures over the window, drift and alarms, in a few lines."""
    for check in checked["checks"]:
        role = next(
            (a for a in ("champion", "challenger") if aliases.get(a) == check["model_id"]), None
        )
        if role is None:
            continue
        live = check["live"][-1]["metrics"] if check["live"] else {}
        figures = ", ".join(
            f"{label} {live[m]:.3f}" for m, label in SHOWN.items() if live.get(m) is not None
        )
        say(f"  {role} {check['model_id']}: {check['rows']} rows captured; live {figures or '—'}")
        if check["drift"] is not None:
            drifted = [row["feature"] for row in check["drift"] if row.get("flagged")]
            say(
                f"    drift: {len(drifted)} of {len(check['drift'])} checked drifted"
                + (
                    f" ({', '.join(drifted[:4])}{'…' if len(drifted) > 4 else ''})"
                    if drifted
                    else ""
                )
            )
        for alarm in check["alarms"]:
            if alarm["state"] == "ALARM":
                say(f"    ALARM {alarm['name']}: {alarm['reason']}")


def _say_renewal(client: Any, dataset: str, renewal: dict[str, Any], say: Any) -> None:
    """A retrain the policy runs (followed to its end: the demo's day waits for it), and
    the comparison of champion and challenger."""
    policy = client.retraining(dataset)
    if policy.get("last_outcome") == RUNNING:
        say(
            f"  retraining ({policy['last_trigger']} trigger): run {policy['last_run_id']} on "
            f"{policy['last_version_id']}, with the champion's configuration"
        )
        run = client.wait_for_training_run(policy["last_run_id"])
        if run["status"] == "SUCCEEDED":
            say(f"    {run['model']['model_id']} is the challenger from now on (in shadow)")
        else:
            say(f"    the retrain {run['status']}: {run['reason']} (nothing moved)")
    compared = client.challenger(dataset).get("comparison")
    if compared and compared.get("metrics"):
        primary = next(m for m in compared["metrics"] if m["metric"] == compared["primary_metric"])
        say(
            f"  comparison on {compared['races']} races both scored: {primary['metric']} "
            f"champion {primary['champion']:.4f}, challenger {primary['challenger']:.4f}, "
            f"better by {primary['difference']:+.4f} [{primary['low']:+.4f}, "
            f"{primary['high']:+.4f}]: {compared['recommendation']}"
        )


def _approve(client: Any, approval: dict[str, Any], say: Any) -> None:
    say(
        f"  approval request {approval['approval_id']}: make {approval['challenger']} the "
        f"champion? ({approval['reason_for_request']})"
    )
    decided = client.decide(approval["approval_id"], "approve", reason="the comparison is clear")
    say(
        f"  approved by {decided['decided_by']}: champion → {decided['challenger']} "
        "(the requests' next alias read answers with it)"
    )
