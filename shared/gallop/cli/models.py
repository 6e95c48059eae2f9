"""gallop models list|show|promote: the registered models and their aliases."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import add_api, add_json, api_client, emit_json, print_table
from gallop.cli.runs import print_record


def add(commands: Any) -> None:
    p = commands.add_parser("models", help="list, show and promote registered models")
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    p.set_defaults(help_of=p)

    listing = actions.add_parser("list", help="the registered models, newest first")
    listing.add_argument("--dataset", default=None, help="only the models of this dataset")
    listing.set_defaults(run=run_list)

    show = actions.add_parser("show", help="one model: features, bases, metrics, report link")
    show.add_argument("model_id")
    show.set_defaults(run=run_show)

    promote = actions.add_parser("promote", help="point an alias at a model")
    promote.add_argument("model_id")
    promote.add_argument("--alias", choices=("champion", "challenger"), default="champion")
    promote.add_argument("--reason", default=None, help="why, for the dataset's alias history")
    promote.set_defaults(run=run_promote)

    for action in (listing, show, promote):
        add_api(action)
        add_json(action)


def run_list(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        found = client.models(args.dataset)
    if args.json:
        emit_json(found)
        return 0
    print_table(
        ["model", "dataset", "task", "created", "aliases"],
        [
            [m["model_id"], m.get("dataset") or "", m["task"], m["created_at"][:19]]
            + [", ".join(m.get("aliases") or [])]
            for m in found
        ],
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        model = client.model(args.model_id)
    if args.json:
        emit_json(model)
    else:
        print_record(model)
    return 0


def run_promote(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        promoted = client.promote(args.model_id, args.alias, args.reason)
    if args.json:
        emit_json(promoted)
    else:
        before = promoted.get("previous") or "none"
        where = f"{promoted['dataset']} " if promoted.get("dataset") else ""
        print(f"{where}{promoted['alias']} → {promoted['model_id']} (before: {before})")
    return 0
