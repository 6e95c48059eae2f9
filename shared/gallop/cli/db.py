"""gallop db upgrade: apply the metadata database's migrations."""

from __future__ import annotations

import argparse
from typing import Any

from gallop.cli.common import add_json, emit_json
from gallop.settings import get_settings


def add(commands: Any) -> None:
    p = commands.add_parser("db", help="metadata database")
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    p.set_defaults(help_of=p)
    upgrade = actions.add_parser("upgrade", help="apply migrations ($DATABASE_URL)")
    add_json(upgrade)
    upgrade.set_defaults(run=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from gallop.metadata.db import engine_for, migrate

    url = get_settings().sqlalchemy_url
    migrate(engine_for(url))
    where = url.split("@")[-1]  # never the password
    if args.json:
        emit_json({"migrated": where})
    else:
        print(f"migrated {where}")
    return 0
