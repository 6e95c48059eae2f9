"""gallop monitor: run the monitor now and print what it found for each model that
served captured predictions: live figures by day, the drift table, the alarms."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import add_api, add_json, api_client, emit_json, print_table, progress

# The live figures shown per day (when the task has them), in this order.
LIVE_COLUMNS = (
    "ndcg@1",
    "ndcg@4",
    "race_log_loss",
    "top1_hit_rate",
    "top1_roi",
    "ece",
    "auc",
    "log_loss",
    "rmse",
    "coverage",
)


def add(commands: Any) -> None:
    p = commands.add_parser(
        "monitor",
        help="check live quality and drift now, as the schedule does",
        description="Run the monitor now: captured predictions scored against the results "
        "stored since, and a drift check of every model's inputs and scores against its "
        "training data, whatever the number of new predictions.",
    )
    p.add_argument("--dataset", default=None, help="only the models of this dataset")
    add_api(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        reply = client.check_monitoring(args.dataset)
    if args.json:
        emit_json(reply)
        return 0
    if not reply["checks"]:
        where = f"of dataset {args.dataset!r} " if args.dataset else ""
        progress(f"no model {where}has captured predictions yet: nothing to check")
    for check in reply["checks"]:
        print_check(check)
    for renewal in reply.get("renewals") or []:
        print(f"renewal of {renewal['dataset']}: {renewal_line(renewal)}")
    return 0


def renewal_line(renewal: dict[str, Any]) -> str:
    """What a monitor run's renewal did for one dataset, in a line."""
    said = []
    retraining = renewal.get("retraining") or {}
    if retraining.get("said"):
        said.append(f"retraining: {retraining['said']}")
    if renewal.get("recommendation"):
        said.append(f"comparison: {renewal['recommendation']}")
    if renewal.get("promoted"):
        said.append(f"{renewal['promoted']} promoted to champion (auto promotion)")
    if renewal.get("approval_id"):
        said.append(f"approval request {renewal['approval_id']} opened")
    if renewal.get("expired"):
        said.append(f"expired: {', '.join(renewal['expired'])}")
    said += [f"! {problem}" for problem in renewal.get("problems") or []]
    return "; ".join(said) or "nothing to do"


def print_check(check: dict[str, Any]) -> None:
    print(
        f"model {check['model_id']} (dataset {check['dataset']}): {check['rows']} captured "
        f"rows in the window, {check['new_rows']} new"
    )
    for problem in check["problems"]:
        print(f"  ! {problem}")
    if check["live"]:
        shown = [c for c in LIVE_COLUMNS if any(c in d["metrics"] for d in check["live"])]
        print("\nlive quality")
        print_table(
            ["day", "races", "rows", *shown],
            [
                [d["day"], str(d["groups"]), str(d["rows"])]
                + [table_number(d["metrics"].get(name)) for name in shown]
                for d in check["live"]
            ],
        )
    if check["drift"] is not None:
        print("\ndrift")
        print_table(
            ["feature", "PSI", "KS", "KS p", "missing", "unseen", "drifted"],
            [
                [
                    row["feature"],
                    table_number(row.get("psi")),
                    table_number(row.get("ks_statistic")),
                    _p_value(row.get("ks_p")),
                    table_number(row.get("missing_share")),
                    table_number(row.get("unseen_share")),
                    "DRIFTED" if row.get("flagged") else "",
                ]
                for row in check["drift"]
            ],
        )
    else:
        print(f"\ndrift not checked: {check['drift_skipped']}")
    print("\nalarms")
    print_table(
        ["alarm", "state", "why"], [[a["name"], a["state"], a["reason"]] for a in check["alarms"]]
    )
    print()


def table_number(value: float | None) -> str:
    """A figure as the tables show it (empty when there is none)."""
    return "" if value is None else f"{value:.4f}"


def _p_value(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"
