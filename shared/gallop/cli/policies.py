"""gallop traffic|retraining [show|set]: a dataset's traffic policy (champion, shadow,
split) and retraining policy (schedule, appended rows, alarm)."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import UserError, add_api, add_json, api_client, emit_json
from gallop.cli.runs import print_record


def add(commands: Any) -> None:
    traffic = _parser(commands, "traffic", "how a dataset's champion requests are shared")
    traffic.add_argument("--mode", choices=("champion", "shadow", "split"), default=None)
    traffic.add_argument(
        "--challenger-share", type=float, default=None, help="split: the challenger's races"
    )
    traffic.add_argument(
        "--shadow-share", type=float, default=None, help="the races the other model also scores"
    )
    traffic.set_defaults(run=run_traffic)

    retraining = _parser(commands, "retraining", "when a dataset is retrained")
    retraining.add_argument("--every-hours", type=float, default=None, help="on a schedule")
    retraining.add_argument(
        "--after-rows", type=int, default=None, help="once this many rows were appended"
    )
    retraining.add_argument(
        "--on-alarm", action="store_true", help="when the champion's alarm fires"
    )
    retraining.add_argument("--time-limit", type=int, default=None, help="seconds per run")
    retraining.add_argument(
        "--auto-promote",
        action="store_true",
        help="promote the challenger on a clear comparison, without an approval",
    )
    retraining.set_defaults(run=run_retraining)


def _parser(commands: Any, name: str, what: str) -> argparse.ArgumentParser:
    p = commands.add_parser(name, help=f"{what}: show or set")
    p.add_argument("action", nargs="?", choices=("show", "set"), default="show")
    p.add_argument("--dataset", required=True, help="the dataset")
    add_api(p)
    add_json(p)
    return p


def run_traffic(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        if args.action == "set":
            if args.mode is None:
                raise UserError("gallop traffic set needs --mode")
            policy = client.put_traffic(
                args.dataset,
                args.mode,
                challenger_share=args.challenger_share,
                shadow_share=args.shadow_share,
            )
        else:
            policy = client.traffic(args.dataset)
    return _print(args, policy)


def run_retraining(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        if args.action == "set":
            policy = client.put_retraining(
                args.dataset,
                every_hours=args.every_hours,
                after_rows=args.after_rows,
                on_alarm=args.on_alarm,
                time_limit=args.time_limit,
                auto_promote=args.auto_promote,
            )
        else:
            policy = client.retraining(args.dataset)
    return _print(args, policy)


def _print(args: argparse.Namespace, policy: dict[str, Any]) -> int:
    if args.json:
        emit_json(policy)
    else:
        print_record(policy)
    return 0
