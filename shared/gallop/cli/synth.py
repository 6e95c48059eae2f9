"""gallop synth races: generated race history and the generator's true win chances."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gallop.cli.common import add_json, emit_json


def add(commands: Any) -> None:
    p = commands.add_parser("synth", help="generate data")
    kinds = p.add_subparsers(title="kinds", metavar="KIND")
    p.set_defaults(help_of=p)
    races = kinds.add_parser("races", help="runner-level race history and true win chances")
    races.add_argument("--races", type=int, default=2000)
    races.add_argument("--seed", type=int, default=0)
    races.add_argument("--out", type=Path, required=True)
    add_json(races)
    races.set_defaults(run=run_races)


def run_races(args: argparse.Namespace) -> int:
    from gallop.synth.races import write_races

    started = time.monotonic()
    runners, truth = write_races(args.races, args.seed, args.out)
    if args.json:
        emit_json({"runners": str(runners), "truth": str(truth), "races": args.races})
    else:
        seconds = time.monotonic() - started
        print(f"wrote {runners} and {truth} ({args.races:,} races) in {seconds:.1f} s")
    return 0
