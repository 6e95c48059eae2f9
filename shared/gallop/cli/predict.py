"""gallop predict: score rows with a model folder (no server) or a registered model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gallop.cli.common import (
    STDIN,
    Failed,
    add_api,
    add_json,
    api_client,
    emit_json,
    read_input,
)


def add(commands: Any) -> None:
    p = commands.add_parser(
        "predict",
        help="score rows with a model folder (no server needed) or a registered model",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model folder (model.onnx and manifest.json, as `gallop train --out` leaves "
        "it), or a registered model's id or alias (champion, challenger)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="whose alias --model names (needed once two datasets have that alias)",
    )
    p.add_argument(
        "--input",
        required=True,
        help='JSON ({"rows": [...]}, a list of row objects, or {"columns", "data"}) or CSV, '
        "or - for stdin: feature rows with the group column, or race-card rows (registered "
        "models only)",
    )
    p.add_argument(
        "--format",
        choices=("json", "csv"),
        default=None,
        help="format of --input (default: from its name; stdin: JSON if it opens with { or [)",
    )
    p.add_argument("--explain", action="store_true", help="add each row's top reasons")
    p.add_argument("--top-k", type=int, default=5, help="reasons per row (default 5)")
    p.add_argument(
        "--snapshot",
        choices=("online", "training"),
        default=None,
        help="registered models' race cards: completed from the newest READY entity "
        "snapshot of the model's dataset (online, the default) or from the one the model "
        "was trained on (training), to reproduce an old answer",
    )
    add_api(p)
    add_json(p)  # the answer is JSON either way; accepted so that every command takes it
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise Failed("--top-k must be at least 1")
    body = _body(args.input, args.format)
    folder = Path(args.model).expanduser()
    if folder.is_dir():
        if args.snapshot:
            raise Failed(
                "--snapshot chooses what completes a registered model's race card; a model "
                "folder takes full feature rows"
            )
        reply = _predict_locally(folder, body, args.explain, args.top_k)
    elif folder.exists():
        raise Failed(f"{args.model}: give the model's folder, not a file in it")
    elif "/" in args.model or "\\" in args.model:
        raise Failed(f"{args.model}: no such model folder")
    else:
        with api_client(args) as client:
            reply = client.predict(args.model, snapshot=args.snapshot, dataset=args.dataset, **body)
            if args.explain:  # the model that answered, should the alias move meanwhile
                explained = client.explain(
                    reply["model_id"], top_k=args.top_k, snapshot=args.snapshot, **body
                )
                reply["explanations"] = explained["explanations"]
    emit_json(reply)
    return 0


def _body(name: str, fmt: str | None) -> dict[str, Any]:
    from gallop.serving.rows import RowsError, rows_body, sniff_format

    data = read_input(name)
    if fmt is None and name == STDIN:
        fmt = sniff_format(data)
    elif fmt is None:
        fmt = Path(name).suffix.lower().lstrip(".")
        if fmt not in ("json", "csv"):
            raise Failed(f"{name}: give a .json or .csv file (or --format)")
    try:
        return rows_body(data, fmt)
    except RowsError as exc:
        raise Failed(f"{name}: {exc}") from None


def _predict_locally(
    folder: Path, body: dict[str, Any], explain: bool, top_k: int
) -> dict[str, Any]:
    from gallop.serving.model import LoadedModel
    from gallop.serving.predict import (
        InputError,
        explain_columns,
        is_card,
        parse,
        predict_columns,
    )

    try:
        model = LoadedModel.from_dir(folder)
    except FileNotFoundError as exc:
        raise Failed(str(exc)) from None
    try:
        columns, values = parse(model, body)
        if is_card(model, columns):
            raise Failed(
                "these are race-card rows: a model folder needs full feature rows; a "
                "registered model (--model champion) completes a card from its entity snapshot"
            )
        reply = predict_columns(model, columns, values)
        if explain:
            explained = explain_columns(model, columns, values, top_k)
            reply["explanations"] = explained["explanations"]
    except InputError as exc:
        raise Failed(str(exc)) from None
    return reply
