"""gallop runs list|show|cancel: training runs on the API."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import add_api, add_json, api_client, emit_json, print_table

STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def add(commands: Any) -> None:
    p = commands.add_parser("runs", help="list, show and cancel training runs")
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    p.set_defaults(help_of=p)

    listing = actions.add_parser("list", help="training runs, newest first")
    listing.add_argument("--dataset", default=None, help="only the runs of this dataset")
    listing.add_argument("--status", choices=STATUSES, default=None)
    listing.set_defaults(run=run_list)

    show = actions.add_parser("show", help="one run: status, stage, metrics, model")
    show.add_argument("run_id")
    show.set_defaults(run=run_show)

    cancel = actions.add_parser("cancel", help="stop a pending or running run")
    cancel.add_argument("run_id")
    cancel.set_defaults(run=run_cancel)

    for action in (listing, show, cancel):
        add_api(action)
        add_json(action)


def run_list(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        found = client.training_runs(args.dataset, args.status)
    if args.json:
        emit_json(found)
        return 0
    print_table(
        ["run", "dataset", "status", "stage", "model"],
        [
            [r["run_id"], r.get("dataset") or "", r["status"], r.get("stage") or ""]
            + [(r.get("model") or {}).get("model_id") or ""]
            for r in found
        ],
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        run = client.training_run(args.run_id)
    if args.json:
        emit_json(run)
    else:
        print_record(run)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        run = client.cancel_training_run(args.run_id)
    if args.json:
        emit_json(run)
    else:
        print(f"run {run['run_id']}: {run['status']}")
    return 0


def print_record(record: dict[str, Any], indent: str = "") -> None:
    """A model or a run as `name: value` lines, nested mappings indented."""
    for name, value in record.items():
        if isinstance(value, dict):
            print(f"{indent}{name}:")
            print_record(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{indent}{name}:")
            for item in value:
                print(f"{indent}  - " + ", ".join(f"{k}: {v}" for k, v in item.items()))
        elif isinstance(value, list):
            print(f"{indent}{name}: {', '.join(map(str, value))}")
        else:
            print(f"{indent}{name}: {'' if value is None else value}")
