"""gallop approvals list|show|approve|reject: the requests to promote a challenger that
a comparison opened, and deciding them (a key with the approver role)."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import add_api, add_json, api_client, emit_json, print_table
from gallop.cli.monitor import table_number

STATUSES = ("PENDING", "APPROVED", "REJECTED", "EXPIRED")


def add(commands: Any) -> None:
    p = commands.add_parser(
        "approvals", help="list, show, approve and reject requests to promote a challenger"
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    p.set_defaults(help_of=p)

    listing = actions.add_parser("list", help="the approval requests, newest first")
    listing.add_argument("--dataset", default=None, help="only this dataset's requests")
    listing.add_argument("--status", choices=STATUSES, default=None, help="only requests in it")
    listing.set_defaults(run=run_list)

    show = actions.add_parser("show", help="one request, with the comparison that opened it")
    show.add_argument("approval_id")
    show.set_defaults(run=run_show)

    decided = []
    for decision, said in (
        ("approve", "the challenger becomes the champion"),
        ("reject", "the champion stays"),
    ):
        action = actions.add_parser(decision, help=f"{decision} a PENDING request: {said}")
        action.add_argument("approval_id")
        action.add_argument("--reason", default=None, help="why (kept in the alias history)")
        action.set_defaults(run=run_decide, decision=decision)
        decided.append(action)

    for action in (listing, show, *decided):
        add_api(action)
        add_json(action)


def run_list(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        found = client.approvals(args.dataset, args.status)
    if args.json:
        emit_json(found)
        return 0
    print_table(
        ["request", "dataset", "status", "champion", "challenger", "opened", "expires"],
        [
            [
                a["approval_id"],
                a.get("dataset") or "",
                a["status"],
                a.get("champion") or "",
                a["challenger"],
                a["opened_at"][:16],
                a["expires_at"][:16],
            ]
            for a in found
        ],
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        approval = client.approval(args.approval_id)
    if args.json:
        emit_json(approval)
    else:
        print_approval(approval)
    return 0


def run_decide(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        approval = client.decide(args.approval_id, args.decision, args.reason)
    if args.json:
        emit_json(approval)
    else:
        print_approval(approval)
    return 0


def print_approval(approval: dict[str, Any]) -> None:
    print(
        f"approval request {approval['approval_id']} ({approval.get('dataset')}): "
        f"{approval['status']}"
    )
    print(f"  champion {approval.get('champion')}, challenger {approval['challenger']}")
    print(f"  opened {approval['opened_at'][:16]}, expires {approval['expires_at'][:16]}")
    if approval.get("decided_at"):
        print(
            f"  decided {approval['decided_at'][:16]} by {approval.get('decided_by')}"
            + (f": {approval['reason']}" if approval.get("reason") else "")
        )
    comparison = approval.get("comparison") or {}
    if comparison:
        print(f"  recommendation: {comparison.get('recommendation')} ({comparison.get('reason')})")
        print_table(
            ["metric", "races", "champion", "challenger", "difference", "95 % interval"],
            [
                [
                    m["metric"],
                    str(m["races"]),
                    table_number(m.get("champion")),
                    table_number(m.get("challenger")),
                    table_number(m.get("difference")),
                    f"{table_number(m.get('low'))} to {table_number(m.get('high'))}",
                ]
                for m in comparison.get("metrics") or []
            ],
        )
        print(f"  {comparison.get('rule')}")
