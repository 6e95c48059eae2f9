"""The `gallop` command."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from gallop.settings import get_settings

SHIPPED_SPEC = Path(__file__).parent / "specs" / "races.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except _UserError as exc:
        print(f"gallop: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code


class _UserError(Exception):
    exit_code = 2


class _BadInput(_UserError):
    """Input a command could not use: exit 1, as a command that ran and said no."""

    exit_code = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gallop", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    def state_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="local state directory (default: $GALLOP_STATE_DIR or ~/.gallop)",
        )

    serve = commands.add_parser("serve", help="run the local stack and the API on 127.0.0.1")
    state_dir_option(serve)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--fresh", action="store_true", help="start with empty local state")
    serve.set_defaults(run=_serve)

    ingest = commands.add_parser("ingest", help="upload a file and wait for its validation")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("--spec", type=Path, required=True, help="dataset spec (YAML or JSON)")
    ingest.add_argument(
        "--api",
        default=None,
        help="API URL (default: the running `gallop serve`, else an embedded stack)",
    )
    ingest.add_argument("--api-key", default=None)
    ingest.add_argument("--timeout", type=float, default=600.0)
    state_dir_option(ingest)
    ingest.set_defaults(run=_ingest)

    synth = commands.add_parser("synth", help="generate data")
    kinds = synth.add_subparsers(title="kinds")
    races = kinds.add_parser("races", help="runner-level race history and true win chances")
    races.add_argument("--races", type=int, default=2000)
    races.add_argument("--seed", type=int, default=0)
    races.add_argument("--out", type=Path, required=True)
    races.set_defaults(run=_synth_races)

    features = commands.add_parser(
        "features", help="compute features offline, or show the online row for a race card"
    )
    features.add_argument("--data", type=Path, help="CSV, Parquet or JSON Lines history")
    features.add_argument("--spec", type=Path, help="dataset spec with a derived section")
    features.add_argument("--out", type=Path, help="features Parquet to write")
    features.set_defaults(run=_features)
    card = features.add_subparsers(title="online").add_parser(
        "card", help="the feature row of each runner of a race card"
    )
    card.add_argument("--state", type=Path, required=True, help="entity snapshot (.npz)")
    card.add_argument("--card", type=Path, required=True, help="JSON list of runner objects")
    card.set_defaults(run=_features_card)

    train = commands.add_parser(
        "train", help="train the stack locally: the SageMaker jobs, in subprocesses"
    )
    train.add_argument("--data", type=Path, required=True, help="history: CSV, Parquet, JSONL")
    train.add_argument("--spec", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True, help="folder for the model artifact")
    train.add_argument(
        "--test",
        type=Path,
        default=None,
        help="held-out races (default: the last fifth of the races by time)",
    )
    train.add_argument(
        "--bases",
        default=None,
        help="comma-separated base models (default by task; e.g. lambdarank,linear)",
    )
    train.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds for the whole run: each boosted base searches its hyperparameters and "
        "fits its folds within its share; the same data, seed and limit give the same model "
        "bytes",
    )
    train.add_argument(
        "--set",
        dest="hyperparameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter (repeatable): of every base job, e.g. num_boost_round=300, or "
        "of the stack job: meta_l2, calibration=isotonic, coverage=0.8, bet_margin, "
        "kelly_fraction",
    )
    train.set_defaults(run=_train)

    predict = commands.add_parser(
        "predict",
        help="score rows with a model folder (no server needed) or a registered model",
    )
    predict.add_argument(
        "--model",
        required=True,
        help="a model folder (model.onnx and manifest.json, as `gallop train --out` leaves "
        "it), or a registered model's id or alias (champion, challenger) on the local stack",
    )
    predict.add_argument(
        "--input",
        type=Path,
        required=True,
        help='JSON ({"rows": [...]}, a list of row objects, or {"columns", "data"}) or CSV: '
        "feature rows with the group column, or race-card rows (registered models only)",
    )
    predict.add_argument("--explain", action="store_true", help="add each row's top reasons")
    predict.add_argument("--top-k", type=int, default=5, help="reasons per row (default 5)")
    predict.add_argument("--api", default=None, help="API URL (default: the local stack)")
    predict.add_argument("--api-key", default=None)
    state_dir_option(predict)
    predict.set_defaults(run=_predict)

    demo = commands.add_parser(
        "demo", help="the whole path on generated races: ingest, train, promote, predict"
    )
    demo.add_argument("--races", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--fresh", action="store_true", help="start with empty local state")
    state_dir_option(demo)
    demo.set_defaults(run=_demo)

    db = commands.add_parser("db", help="metadata database")
    db_commands = db.add_subparsers(title="actions")
    upgrade = db_commands.add_parser("upgrade", help="apply migrations ($DATABASE_URL)")
    upgrade.set_defaults(run=_db_upgrade)
    return parser


def _state_dir(args: argparse.Namespace) -> Path:
    return (args.state_dir or get_settings().state_dir).expanduser()


# -- serve -------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from gallop.local.stack import LocalStack, StateDirBusy

    state_dir = _state_dir(args)
    try:
        stack = LocalStack(state_dir, fresh=args.fresh).start()
    except StateDirBusy as exc:
        raise _UserError(str(exc)) from None
    try:
        assert stack.settings is not None
        print(f"gallop local stack, state in {stack.state_dir}")
        print(f"  S3/SQS (moto):  {stack.settings.aws_endpoint_url}")
        print(f"  API:            http://127.0.0.1:{args.port}  (docs: /docs)")
        print(f"  API key:        {stack.api_key}")
        print("  Ctrl-C stops everything.", flush=True)
        stack.serve_api(args.port, block=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how serve is meant to stop; uvicorn re-raises it after shutting down
    finally:
        stack.stop()
        print("stopped.")
    return 0


# -- ingest ------------------------------------------------------------------------------


@contextmanager
def _api_client(
    args: argparse.Namespace, quiet: bool = True, notes: TextIO | None = None
) -> Iterator[Any]:
    """A client of the API named on the command line, of a running `gallop serve`, or of a
    local stack started here for the length of the command. `notes` (default stdout) is
    where it says which."""
    from gallop.client import GallopClient
    from gallop.local.stack import LocalStack, free_port, running_endpoints

    if getattr(args, "api", None):
        if not args.api_key:
            raise _UserError("--api needs --api-key")
        client = GallopClient(args.api, args.api_key)
        try:
            yield client
        finally:
            client.close()
        return
    state_dir = _state_dir(args)
    running = None if getattr(args, "fresh", False) else running_endpoints(state_dir)
    if running:
        print(f"using the running local stack at {running['api_url']}", file=notes or sys.stdout)
        client = GallopClient(running["api_url"], running["api_key"])
        try:
            yield client
        finally:
            client.close()
        return
    with LocalStack(state_dir, fresh=getattr(args, "fresh", False), quiet=quiet) as stack:
        client = GallopClient(stack.serve_api(free_port()), stack.api_key)
        try:
            yield client
        finally:
            client.close()


def _ingest(args: argparse.Namespace) -> int:
    from gallop.spec import load_spec

    if not args.file.is_file():
        raise _UserError(f"{args.file}: no such file")
    spec = _load_spec(args.spec, load_spec)
    with _api_client(args) as client:
        status, version = ingest_file(client, spec, args.file, timeout=args.timeout)
    print_version(version)
    return 0 if status == "VALID" else 1


def _load_spec(path: Path, loader: Any) -> Any:
    from pydantic import ValidationError

    try:
        return loader(path)
    except FileNotFoundError:
        raise _UserError(f"{path}: no such spec file") from None
    except (ValueError, ValidationError) as exc:
        raise _UserError(f"{path}: invalid spec: {exc}") from None


def ingest_file(
    client: Any, spec: Any, path: Path, timeout: float = 600.0
) -> tuple[str, dict[str, Any]]:
    """Register the spec, upload the file, wait for validation; (status, version)."""
    from gallop.client import ApiError

    try:
        client.register_dataset(spec)
    except ApiError as exc:
        raise _UserError(str(exc)) from None
    size = path.stat().st_size
    started = time.monotonic()
    print(f"uploading {path.name} ({size:,} bytes) to dataset {spec.name!r} ...", flush=True)
    upload_id = client.upload_file(spec.name, path)
    print(f"  upload {upload_id}: waiting for validation", end="", flush=True)
    dots = [0]

    def progress(waited: float) -> None:
        if int(waited) > dots[0]:
            dots[0] = int(waited)
            print(".", end="", flush=True)

    status = client.wait_for_upload(spec.name, upload_id, timeout=timeout, progress=progress)
    print(f" {status['status']} in {time.monotonic() - started:.1f} s")
    return status["status"], client.version(spec.name, status["version_id"])


def print_version(version: dict[str, Any]) -> None:
    report = version["report"]
    if version["status"] == "VALID":
        print(
            f"VALID version {version['version_id']}: {version['row_count']:,} rows"
            + (f", {version['group_count']:,} groups" if version["group_count"] else "")
        )
        print(f"  canonical data: {version['data_key']}")
        print(f"  features (float32): {', '.join(report.get('features', []))}")
    else:
        print(
            f"REJECTED version {version['version_id']}; the upload is kept at "
            f"{version['source_key']}"
        )
        for error in report["errors"]:
            print(f"  ✗ [{error['code']}] {error['message']}")
    for warning in report.get("warnings", []):
        print(f"  ! [{warning['code']}] {warning['message']}")


# -- synth, demo, db ---------------------------------------------------------------------


def _synth_races(args: argparse.Namespace) -> int:
    from gallop.synth.races import write_races

    started = time.monotonic()
    runners, truth = write_races(args.races, args.seed, args.out)
    print(
        f"wrote {runners} and {truth} ({args.races:,} races) in {time.monotonic() - started:.1f} s"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from gallop.spec import load_spec
    from gallop.synth.races import write_races

    state_dir = _state_dir(args)
    work = state_dir / "demo"
    stage = _Stages(8)
    stage(f"generating {args.races:,} races (seed {args.seed}); the last one is held back")
    generated, truth_path = write_races(args.races, args.seed, work / "generated.csv")
    # The last race is held back: it is the upcoming race the card is for.
    runners = pd.read_csv(generated, dtype=str, keep_default_na=False)
    upcoming = runners["race_id"] == runners["race_id"].iloc[-1]
    data = work / "races.csv"
    runners[~upcoming].to_csv(data, index=False, lineterminator="\n")
    held_back = runners[upcoming]
    spec = load_spec(SHIPPED_SPEC)
    card = _card(held_back, spec)
    card_path = work / "card.json"
    card_path.write_text(json.dumps({"rows": card}, indent=2) + "\n")
    broken = _broken_copy(data, work / "races-broken.csv")

    stage("starting the local stack (moto S3/SQS, ingest and features pollers, API)")
    with _api_client(args) as client:
        stage("ingesting through the API: presigned POST → S3 → SQS → ingest")
        status, version = ingest_file(client, spec, data)
        print_version(version)
        if status != "VALID":
            return 1
        stage("and a file with mistakes in it, to show a validation report")
        bad_status, bad_version = ingest_file(client, spec, broken)
        print_version(bad_version)

        stage("features: computed when the version became VALID")
        feature_set = client.wait_for_features(spec.name, version["version_id"])
        if feature_set["status"] != "READY":
            print(f"features FAILED: {feature_set['reason']}")
            return 1
        print(
            f"READY: {feature_set['row_count']:,} rows x {len(feature_set['features'])} "
            f"float32 features in {feature_set['data_key']}"
        )

        stage("training the stack: POST /v1/training-runs, then GET it until it ends")
        run = _train_through_api(client, spec.name, version["version_id"], stage)
        if run["status"] != "SUCCEEDED":
            print(f"training FAILED: {run['reason']}")
            return 1
        model_id = run["model"]["model_id"]

        stage(f"promoting {model_id} to champion: POST /v1/models/{{id}}/promote")
        promoted = client.promote(model_id, "champion")
        print(f"champion → {promoted['model_id']} (before: {promoted.get('previous') or 'none'})")

        stage(
            f"predicting the held-back race from its card ({len(card)} runners): "
            "POST /v1/predict, then POST /v1/explain (top 3 reasons)"
        )
        predicted = client.predict("champion", card)
        explained = client.explain("champion", card, top_k=3)
    truth = pd.read_csv(truth_path, dtype={"true_win_probability": float})
    _print_predictions(held_back, predicted, explained, truth)
    _print_report(run, state_dir)
    print(f"\ndone in {stage.elapsed:.1f} s; state in {state_dir}")
    print(f"next: gallop predict --model champion --input {card_path} --explain")
    return 0 if bad_status == "REJECTED" else 1


class _Stages:
    """Announces each stage of a long command with the time since the command began."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        self.count += 1
        print(f"\n[{self.count}/{self.total} at {self.elapsed:5.1f} s] {message}", flush=True)


def _train_through_api(
    client: Any, dataset: str, version_id: str, stage: _Stages
) -> dict[str, Any]:
    """Start (or find) the run on the version and follow it, printing each new stage."""
    started = client.start_training_run(dataset, version=version_id)
    print(f"run {started['run_id']}: {started['status']}", flush=True)
    if started["status"] == "SUCCEEDED":
        print("  the same run (same data, config and code) already succeeded: not trained again")
    seen: list[tuple[str, str | None]] = []

    def progress(run: dict[str, Any]) -> None:
        now = (run["status"], run["stage"])
        if not seen or seen[-1] != now:
            seen.append(now)
            print(f"  {stage.elapsed:5.1f} s  {run['status']}: {run['stage'] or ''}", flush=True)

    run: dict[str, Any] = client.wait_for_training_run(started["run_id"], progress=progress)
    if run["status"] == "SUCCEEDED":
        metrics = run["metrics"] or {}
        shown = ", ".join(
            f"{name} {metrics[name]:.3f}"
            for name in ("ndcg@1", "top1_hit_rate", "race_log_loss")
            if name in metrics
        )
        print(f"model {run['model']['model_id']}; on the held-out races: {shown}")
    return run


def _card(rows: Any, spec: Any) -> list[dict[str, Any]]:
    """What an application sends before the off: everything but the result."""
    card = []
    post_race = {spec.target, *spec.post_race}
    for record in rows.to_dict("records"):
        entry: dict[str, Any] = {}
        for name, value in record.items():
            if name in post_race:
                continue
            try:
                entry[name] = float(value) if name in (spec.features or []) else value
            except ValueError:
                entry[name] = value
        card.append(entry)
    return card


def _print_predictions(
    rows: Any, predicted: dict[str, Any], explained: dict[str, Any], truth: Any
) -> None:
    """The held-back race as the model saw it before the off, beside what happened."""
    race = rows["race_id"].iloc[0]
    chance = truth[truth["race_id"] == race].set_index("horse_id")["true_win_probability"]
    print(
        f"\nthe held-back race {race} ({rows['race_time'].iloc[0]}) by {predicted['model_id']}, "
        "from its card alone, beside the result and the generator's true chances:"
    )
    lines = []
    for runner, prediction, explanation in zip(
        rows.to_dict("records"),
        predicted["predictions"],
        explained["explanations"],
        strict=True,
    ):
        top = explanation["top"]
        lines.append(
            (
                int(prediction["rank"]),
                runner["horse_id"],
                100 * prediction["win_probability"],
                _percent(prediction.get("place_probability")),
                runner["position"],
                100 * chance[runner["horse_id"]],
                top[0]["reason"] if top else "—",
            )
        )
    print(
        f"{'runner':<9}{'win %':>7}{'place %':>9}{'rank':>6}{'finish':>8}{'true win %':>12}"
        "  top reason"
    )
    for rank, horse, win, place, finish, true_win, reason in sorted(lines):
        print(f"{horse:<9}{win:>7.1f}{place:>9}{rank:>6}{finish:>8}{true_win:>12.1f}  {reason}")
    winner = next((line for line in lines if line[4] == "1"), None)
    if winner is not None:
        print(
            f"the winner, {winner[1]}, was ranked {winner[0]} with {winner[2]:.1f}% "
            f"(true chance {winner[5]:.1f}%)"
        )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _print_report(run: dict[str, Any], state_dir: Path, wait: float = 5.0) -> None:
    """The run's HTML report: the file the S3 mirror keeps, and the presigned link."""
    key = run["model"]["report_key"]
    deadline = time.monotonic() + wait  # a running `gallop serve` mirrors once a second
    found: list[Path] = []
    while not found and time.monotonic() < deadline:
        found = sorted((state_dir / "s3").glob(f"*/{key}"))
        if not found:
            time.sleep(0.2)
    print("\ntraining report:")
    if found:
        print(f"  file: {found[0].resolve()}")
    print(f"  url (while the local stack runs): {run['report_url']}")


# -- predict -----------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise _BadInput("--top-k must be at least 1")
    body = prediction_body(args.input)
    folder = Path(args.model).expanduser()
    if folder.is_dir():
        reply = _predict_locally(folder, body, args.explain, args.top_k)
    elif folder.exists():
        raise _BadInput(f"{args.model}: give the model's folder, not a file in it")
    elif "/" in args.model or "\\" in args.model:
        raise _BadInput(f"{args.model}: no such model folder")
    else:
        reply = _predict_through_api(args, body)
    print(json.dumps(reply, indent=2))
    return 0


def prediction_body(path: Path) -> dict[str, Any]:
    """The rows of a JSON or CSV file as a /v1/predict body (without the model): `rows`
    (a list of objects) or `columns` and `data`."""
    if not path.is_file():
        raise _BadInput(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json_body(path)
    if suffix == ".csv":
        return _csv_body(path)
    raise _BadInput(f"{path}: give a .json or .csv file")


def _json_body(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadInput(f"{path}: not JSON: {exc}") from None
    if isinstance(loaded, list):
        loaded = {"rows": loaded}
    if isinstance(loaded, dict) and "rows" in loaded:
        rows = loaded["rows"]
        if not isinstance(rows, list):
            raise _BadInput(f'{path}: "rows" must be a list of row objects')
        wrong = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
        if wrong is not None:
            raise _BadInput(f"{path}: row {wrong} is not an object")
        if not rows:
            raise _BadInput(f"{path}: no rows")
        return {"rows": rows}
    if isinstance(loaded, dict) and "columns" in loaded and "data" in loaded:
        if not loaded["data"]:
            raise _BadInput(f"{path}: no rows")
        return {"columns": loaded["columns"], "data": loaded["data"]}
    raise _BadInput(
        f'{path}: expected {{"rows": [...]}}, a list of row objects, or {{"columns", "data"}}'
    )


def _csv_body(path: Path) -> dict[str, Any]:
    import pandas as pd

    try:  # as text, as ingestion reads it: ids such as 000050 keep their zeros
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise _BadInput(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _BadInput(f"{path}: not a readable CSV: {exc}") from None
    if frame.empty:
        raise _BadInput(f"{path}: no rows")
    columns = [_csv_column(frame[c].tolist()) for c in frame.columns]
    return {
        "columns": [str(c) for c in frame.columns],
        "data": [list(r) for r in zip(*columns, strict=True)],
    }


def _csv_column(cells: list[str]) -> list[Any]:
    """Numbers where every filled cell is one (and none is a zero-padded id), else text;
    an empty cell is a missing value (null)."""
    filled = [c.strip() for c in cells if c.strip()]
    padded = any(re.fullmatch(r"[+-]?0\d+", c) for c in filled)
    if all(map(_is_number, filled)) and not padded:
        return [float(c) if c.strip() else None for c in cells]
    return [c if c.strip() else None for c in cells]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
        raise _BadInput(str(exc)) from None
    try:
        columns, values = parse(model, body)
        if is_card(model, columns):
            raise _BadInput(
                "these are race-card rows: a model folder needs full feature rows; a "
                "registered model (--model champion) completes a card from its entity snapshot"
            )
        reply = predict_columns(model, columns, values)
        if explain:
            explained = explain_columns(model, columns, values, top_k)
            reply["explanations"] = explained["explanations"]
    except InputError as exc:
        raise _BadInput(str(exc)) from None
    return reply


def _predict_through_api(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    from gallop.client import ApiError

    with _api_client(args, notes=sys.stderr) as client:
        try:
            reply: dict[str, Any] = client.predict(args.model, **body)
            if args.explain:  # the model that answered, should the alias move meanwhile
                explained = client.explain(reply["model_id"], top_k=args.top_k, **body)
                reply["explanations"] = explained["explanations"]
        except ApiError as exc:
            if 400 <= exc.status_code < 500:  # unknown model or alias (404), bad rows (422)
                raise _BadInput(_api_message(exc)) from None
            raise
    return reply


def _api_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail")
        if isinstance(message, str):
            return message
    return str(exc)


def _broken_copy(source: Path, out: Path) -> Path:
    """The demo's races with three typical mistakes: a typo in a number, a horse entered
    twice in one race, and a race with a single runner."""
    import pandas as pd

    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    frame.loc[3, "weight_kg"] = "57,5"
    first_race = frame["race_id"] == frame.loc[0, "race_id"]
    frame.loc[frame.index[first_race][1], "horse_id"] = frame.loc[0, "horse_id"]
    lonely = frame.iloc[[-1]].assign(race_id="R-LONELY")
    pd.concat([frame, lonely]).to_csv(out, index=False, lineterminator="\n")
    return out


def _features(args: argparse.Namespace) -> int:
    import json

    from gallop.features.build import build_features
    from gallop.features.plan import FeatureSpecError
    from gallop.ingest.formats import format_of
    from gallop.ingest.problems import UnreadableFile
    from gallop.ingest.readers import read_table
    from gallop.ingest.validate import validate
    from gallop.spec import load_spec

    if not (args.data and args.spec and args.out):
        raise _UserError("features needs --data, --spec and --out (or: features card ...)")
    if not args.data.is_file():
        raise _UserError(f"{args.data}: no such file")
    spec = _load_spec(args.spec, load_spec)
    started = time.monotonic()
    try:
        frame = read_table(args.data.read_bytes(), format_of(args.data.name))
    except UnreadableFile as exc:
        raise _UserError(f"{args.data}: {exc.problem.message}") from None
    checked = validate(frame, spec)
    if not checked.ok:
        for problem in checked.problems:
            print(f"  ✗ [{problem.code}] {problem.message}")
        return 1
    assert checked.canonical is not None
    try:
        built = build_features(checked.canonical, spec)
    except FeatureSpecError as exc:
        raise _UserError(f"features: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    built.frame.to_parquet(args.out, index=False)
    state_path = args.out.with_suffix(".state.npz")
    manifest_path = args.out.with_suffix(".manifest.json")
    state_path.write_bytes(built.state.to_bytes())
    manifest_path.write_text(json.dumps(built.manifest, indent=2))
    seconds = time.monotonic() - started
    print(f"{len(built.frame):,} rows x {len(built.plan.features)} features in {seconds:.1f} s")
    print(f"  features:        {args.out}")
    print(f"  entity snapshot: {state_path}")
    print(f"  manifest:        {manifest_path}")
    return 0


def _features_card(args: argparse.Namespace) -> int:
    import json

    from gallop.features.online import CardError, card_features
    from gallop.features.state import State

    for path in (args.state, args.card):
        if not path.is_file():
            raise _UserError(f"{path}: no such file")
    try:
        card = json.loads(args.card.read_text())
    except json.JSONDecodeError as exc:
        raise _UserError(f"{args.card}: not JSON: {exc}") from None
    if not isinstance(card, list) or not all(isinstance(r, dict) for r in card):
        raise _UserError(f"{args.card}: a card is a JSON list of runner objects")
    try:
        names, matrix = card_features(card, State.from_bytes(args.state.read_bytes()))
    except CardError as exc:
        raise _UserError(f"{args.card}: {exc}") from None
    state_meta = State.from_bytes(args.state.read_bytes()).meta
    label = state_meta["spec"].get("entity") or state_meta["spec"].get("group")
    headers = [str(row.get(label, i + 1)) for i, row in enumerate(card)]
    width = max(len(n) for n in names)
    print(" " * width + "".join(f"{h:>12}" for h in headers))
    for j, name in enumerate(names):
        print(f"{name:<{width}}" + "".join(f"{v:>12.4g}" for v in matrix[:, j]))
    return 0


def _canonical_or_report(path: Path, spec: Any) -> Any:
    from gallop.ingest.formats import format_of
    from gallop.ingest.problems import UnreadableFile
    from gallop.ingest.readers import read_table
    from gallop.ingest.validate import validate

    if not path.is_file():
        raise _UserError(f"{path}: no such file")
    try:
        frame = read_table(path.read_bytes(), format_of(path.name))
    except UnreadableFile as exc:
        raise _UserError(f"{path}: {exc.problem.message}") from None
    checked = validate(frame, spec)
    if not checked.ok:
        for problem in checked.problems:
            print(f"  ✗ [{problem.code}] {problem.message}")
        raise _UserError(f"{path} is not valid data for this spec (see above)")
    return checked.canonical


def _train(args: argparse.Namespace) -> int:
    import shutil

    import numpy as np
    import pandas as pd

    from gallop.features.build import build_features
    from gallop.features.plan import FeatureSpecError
    from gallop.spec import load_spec
    from gallop.training.config import BadRunConfig, check_base_settings, split_hyperparameters
    from gallop.training.runner import TrainingFailed, holdout_split, train_locally

    chosen = _hyperparameters(args.hyperparameters)
    if args.time_limit is not None:
        chosen["time_limit"] = args.time_limit
    try:
        check_base_settings(chosen)
    except BadRunConfig as exc:
        raise _UserError(str(exc)) from None
    base_settings, stack_settings = split_hyperparameters(chosen)
    started = time.monotonic()
    spec = _load_spec(args.spec, load_spec)
    history = _canonical_or_report(args.data, spec)
    held = _canonical_or_report(args.test, spec) if args.test else None
    # Test races get their features from the history before them, as they would live.
    if held is not None and spec.group:
        shared = sorted(set(history[spec.group]) & set(held[spec.group]), key=str)
        if shared:  # LETOR-style files number their queries from 1 in each file
            raise _BadInput(
                f"--test shares {len(shared)} {spec.group} ids with --data (e.g. "
                f"{', '.join(map(str, shared[:5]))}): a group must be in one file only"
            )
    everything = pd.concat([history, held]) if held is not None else history
    try:
        built = build_features(everything.reset_index(drop=True), spec)
    except FeatureSpecError as exc:
        raise _UserError(f"features: {exc}") from None
    print(f"{len(built.frame):,} rows x {len(built.plan.features)} features", flush=True)
    try:
        if held is not None:
            # build_features keeps the row order: the test file's rows come last
            is_test = np.arange(len(built.frame)) >= len(history)
            train, test = built.frame[~is_test], built.frame[is_test]
        else:
            train, test = holdout_split(built.frame, built.manifest)
        model_dir = train_locally(
            train,
            test,
            built.manifest,
            args.out / "work",
            bases=_bases(args.bases, spec.task.value),
            progress=lambda line: print(line, flush=True),
            base_hyperparameters=base_settings,
            stack_hyperparameters=stack_settings,
        )
    except TrainingFailed as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    for path in model_dir.iterdir():
        shutil.copy2(path, args.out / path.name)
    manifest = json.loads((args.out / "manifest.json").read_text())
    _print_metrics(manifest)
    print(
        f"model: {args.out / 'model.onnx'} (ONNX equals the native stack within "
        f"{max(manifest['onnx_parity'].values()):.1e}); {time.monotonic() - started:.0f} s"
    )
    print(f"report: {args.out / 'report.html'}")
    return 0


def _bases(text: str | None, task: str) -> tuple[str, ...] | None:
    from gallop.training.config import BadRunConfig, bases_for

    if text is None:
        return None
    try:
        return tuple(bases_for(task, [b.strip() for b in text.split(",") if b.strip()]))
    except BadRunConfig as exc:
        raise _UserError(str(exc)) from None


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs; values read as JSON where they are (numbers, true), else text."""
    from gallop.training.contract import decode

    chosen = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise _UserError(f"--set {pair!r}: write NAME=VALUE, e.g. num_boost_round=300")
        chosen[name.strip()] = decode(value.strip())
    return chosen


def _print_metrics(manifest: dict[str, Any]) -> None:
    metrics = manifest["metrics"]
    models = [name.split("_", 2)[-1] for name in metrics]  # base_0_lambdarank -> lambdarank
    print(f"\non the {manifest['evaluated_on']} rows:")
    print(f"{'':<16}" + "".join(f"{m[:20]:>21}" for m in models))
    for metric in metrics["stack"]:
        values = [metrics[name].get(metric, float("nan")) for name in metrics]
        print(f"{metric:<16}" + "".join(f"{v:>21.4f}" for v in values))
    weights = ", ".join(f"{b['model']} {b['weight']:.3f}" for b in manifest["base_models"])
    print(f"meta-learner weights: {weights}")
    for strategy, result in (manifest.get("betting") or {}).items():
        print(
            f"betting ({strategy}): {result['bets']:.0f} bets, turnover {result['turnover']:.1f},"
            f" profit {result['profit']:+.1f}, ROI {result['roi']:+.1%},"
            f" max drawdown {result['max_drawdown']:.1f}"
        )


def _db_upgrade(_args: argparse.Namespace) -> int:
    from gallop.metadata.db import engine_for, migrate

    url = get_settings().sqlalchemy_url
    migrate(engine_for(url))
    print(f"migrated {url.split('@')[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
