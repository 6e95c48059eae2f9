"""The `gallop` command: one module per command, each a thin shim over the library.

Results go to stdout (one JSON document with --json), progress to stderr. Exit codes:
0 done, 1 the command ran and failed (bad input, an API error), 2 used wrongly."""

from __future__ import annotations

import argparse
import os
import sys

from gallop import __version__
from gallop.cli import (
    aliases,
    approvals,
    db,
    demo,
    features,
    ingest,
    models,
    monitor,
    policies,
    predict,
    runs,
    serve,
    synth,
    train,
)
from gallop.cli.common import SHIPPED_SPEC, UserError
from gallop.extras import MissingExtra, missing_extra

__all__ = ["SHIPPED_SPEC", "main", "parser"]

COMMANDS = (
    serve,
    ingest,
    synth,
    features,
    train,
    predict,
    models,
    aliases,
    policies,
    approvals,
    monitor,
    runs,
    demo,
    db,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gallop", description=__doc__.split("\n")[0])
    top.add_argument("--version", action="version", version=f"gallop {__version__}")
    commands = top.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if not hasattr(args, "run"):
        # `gallop` or `gallop models`: the help of what was named, as a usage error
        (getattr(args, "help_of", None) or top).print_help(sys.stderr)
        return 2
    try:
        try:
            return int(args.run(args) or 0)
        except ModuleNotFoundError as exc:  # `pip install gallop` without the extra it needs
            missing = missing_extra(exc)
            if missing is None:
                raise
            raise missing from exc
    except KeyboardInterrupt:
        return 130
    except MissingExtra as exc:
        print(f"gallop: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gallop ... | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except UserError as exc:
        print(f"gallop: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
