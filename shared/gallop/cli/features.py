"""gallop features: features computed offline from a history file, or the online feature
row of each runner of a race card."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gallop.cli.common import (
    Failed,
    UserError,
    add_format,
    add_json,
    data_format,
    emit_json,
    load_spec,
    read_input,
)

if TYPE_CHECKING:
    import pandas as pd

    from gallop.spec import DatasetSpec


def add(commands: Any) -> None:
    p = commands.add_parser(
        "features", help="compute features offline, or show the online row for a race card"
    )
    p.add_argument("--data", help="CSV, Parquet or JSON Lines history, or - for stdin")
    add_format(p, "--data")
    p.add_argument("--spec", type=Path, help="dataset spec with a derived section")
    p.add_argument("--out", type=Path, help="features Parquet to write")
    add_json(p)
    p.set_defaults(run=run)
    card = p.add_subparsers(title="online", metavar="ACTION").add_parser(
        "card", help="the feature row of each runner of a race card"
    )
    card.add_argument("--state", type=Path, required=True, help="entity snapshot (.npz)")
    card.add_argument("--card", required=True, help="JSON list of runner objects, or - for stdin")
    add_json(card)
    card.set_defaults(run=run_card)


def canonical(name: str, fmt: str | None, spec: DatasetSpec) -> tuple[pd.DataFrame | None, list]:
    """(the canonical table, []) of valid data, else (None, its problems)."""
    from gallop.ingest.problems import UnreadableFile
    from gallop.ingest.readers import read_table
    from gallop.ingest.validate import validate

    fmt = data_format(name, fmt)
    try:
        frame = read_table(read_input(name), fmt)
    except UnreadableFile as exc:
        raise Failed(f"{name}: {exc.problem.message}") from None
    checked = validate(frame, spec)
    return checked.canonical if checked.ok else None, checked.problems


def run(args: argparse.Namespace) -> int:
    from gallop.features.build import build_features
    from gallop.features.plan import FeatureSpecError

    if not (args.data and args.spec and args.out):
        raise UserError("features needs --data, --spec and --out (or: features card ...)")
    spec = load_spec(args.spec)
    started = time.monotonic()
    table, problems = canonical(args.data, args.format, spec)
    if table is None:
        if args.json:
            emit_json({"valid": False, "problems": [p.to_dict() for p in problems]})
        for problem in [] if args.json else problems:
            print(f"  ✗ [{problem.code}] {problem.message}")
        return 1
    try:
        built = build_features(table, spec)
    except FeatureSpecError as exc:
        raise UserError(f"features: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    built.frame.to_parquet(args.out, index=False)
    state_path = args.out.with_suffix(".state.npz")
    manifest_path = args.out.with_suffix(".manifest.json")
    state_path.write_bytes(built.state.to_bytes())
    manifest_path.write_text(json.dumps(built.manifest, indent=2))
    if args.json:
        emit_json(
            {
                "valid": True,
                "rows": len(built.frame),
                "features": list(built.plan.features),
                "out": str(args.out),
                "entity_snapshot": str(state_path),
                "manifest": str(manifest_path),
            }
        )
        return 0
    seconds = time.monotonic() - started
    print(f"{len(built.frame):,} rows x {len(built.plan.features)} features in {seconds:.1f} s")
    print(f"  features:        {args.out}")
    print(f"  entity snapshot: {state_path}")
    print(f"  manifest:        {manifest_path}")
    return 0


def run_card(args: argparse.Namespace) -> int:
    from gallop.features.online import CardError, card_features
    from gallop.features.state import State

    if not args.state.is_file():
        raise UserError(f"{args.state}: no such file")
    try:
        card = json.loads(read_input(args.card))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{args.card}: not JSON: {exc}") from None
    if not isinstance(card, list) or not all(isinstance(r, dict) for r in card):
        raise UserError(f"{args.card}: a card is a JSON list of runner objects")
    snapshot = State.from_bytes(args.state.read_bytes())
    try:
        names, matrix = card_features(card, snapshot)
    except CardError as exc:
        raise Failed(f"{args.card}: {exc}") from None
    label = snapshot.meta["spec"].get("entity") or snapshot.meta["spec"].get("group")
    headers = [str(row.get(label, i + 1)) for i, row in enumerate(card)]
    if args.json:  # NaN (no history yet) as null: JSON has no NaN
        rows = [
            {
                "runner": h,
                "features": {n: (None if v != v else v) for n, v in zip(names, r, strict=True)},
            }
            for h, r in zip(headers, matrix.tolist(), strict=True)
        ]
        emit_json({"features": names, "rows": rows})
        return 0
    width = max(len(n) for n in names)
    print(" " * width + "".join(f"{h:>12}" for h in headers))
    for j, name in enumerate(names):
        print(f"{name:<{width}}" + "".join(f"{v:>12.4g}" for v in matrix[:, j]))
    return 0
