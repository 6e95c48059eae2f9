"""gallop aliases [show|history|rollback]: each dataset's champion and challenger, the
history of their moves, and rolling the champion back one step."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import UserError, add_api, add_json, api_client, emit_json, print_table


def add(commands: Any) -> None:
    p = commands.add_parser(
        "aliases", help="each dataset's champion and challenger, their history, rollback"
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("show", "history", "rollback"),
        default="show",
        help="show (default): the aliases and the traffic policy; history: every move, "
        "newest first; rollback: the champion goes back one step",
    )
    p.add_argument("--dataset", default=None, help="the dataset (show: default every one)")
    p.add_argument("--reason", default=None, help="rollback: why, for the history")
    add_api(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action != "show" and not args.dataset:
        raise UserError(f"gallop aliases {args.action} needs --dataset")
    if args.reason is not None and args.action != "rollback":
        raise UserError("--reason goes with rollback")
    with api_client(args) as client:
        if args.action == "history":
            return _history(args, client.alias_history(args.dataset))
        if args.action == "rollback":
            return _rolled_back(args, client.rollback(args.dataset, args.reason))
        names = [args.dataset] if args.dataset else [d["name"] for d in client.datasets()]
        found = [client.aliases(name) for name in names]
    if args.json:
        emit_json(found)
        return 0
    print_table(
        ["dataset", "champion", "challenger", "traffic"],
        [
            [a["dataset"], a["champion"] or "", a["challenger"] or "", _traffic(a["traffic"])]
            for a in found
        ],
    )
    return 0


def _traffic(policy: dict[str, Any]) -> str:
    if policy["mode"] == "split":
        return f"split {policy['challenger_share']:g} to the challenger"
    if policy["mode"] == "shadow":
        return f"shadow {policy['shadow_share']:g}"
    return "champion"


def _history(args: argparse.Namespace, lines: list[dict[str, Any]]) -> int:
    if args.json:
        emit_json(lines)
        return 0
    print_table(
        ["at", "alias", "action", "from", "to", "by", "reason"],
        [
            [line["at"][:19], line["alias"], line["action"]]
            + [line["from_model"] or "", line["to_model"] or "", line["actor"]]
            + [line["reason"] or ""]
            for line in lines
        ],
    )
    return 0


def _rolled_back(args: argparse.Namespace, rolled: dict[str, Any]) -> int:
    if args.json:
        emit_json(rolled)
    else:
        before = rolled.get("from_model") or "none"
        print(f"{rolled['dataset']} champion → {rolled['to_model']} (before: {before})")
    return 0
