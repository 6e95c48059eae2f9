"""The `gallop` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
        print(f"gallop: {exc}", file=sys.stderr)
        return 2


class _UserError(Exception):
    pass


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
    train.set_defaults(run=_train)

    demo = commands.add_parser("demo", help="the whole path on generated races")
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
def _api_client(args: argparse.Namespace, quiet: bool = True) -> Iterator[Any]:
    """A client of the API named on the command line, of a running `gallop serve`, or of a
    local stack started here for the length of the command."""
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
        print(f"using the running local stack at {running['api_url']}")
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
    started = time.monotonic()
    print(f"[1/4] generating {args.races:,} races (seed {args.seed}) ...", flush=True)
    generated, truth_path = write_races(args.races, args.seed, work / "generated.csv")
    # The last race is held back: it is the upcoming race the card is for.
    runners = pd.read_csv(generated, dtype=str, keep_default_na=False)
    upcoming = runners["race_id"] == runners["race_id"].iloc[-1]
    data = work / "races.csv"
    runners[~upcoming].to_csv(data, index=False, lineterminator="\n")
    card_rows = runners[upcoming]
    spec = load_spec(SHIPPED_SPEC)
    broken = _broken_copy(data, work / "races-broken.csv")

    print(
        "[2/4] starting the local stack (moto S3/SQS, ingest and features pollers, API) ...",
        flush=True,
    )
    with _api_client(args) as client:
        print("[3/4] ingesting through the API: presigned POST → S3 → SQS → ingest", flush=True)
        status, version = ingest_file(client, spec, data)
        print_version(version)
        print("\nand a file with mistakes in it, to show a validation report:")
        bad_status, bad_version = ingest_file(client, spec, broken)
        print_version(bad_version)
        if status != "VALID":
            return 1
        print("\n[4/4] features: computed when the version became VALID ...", flush=True)
        feature_set = client.wait_for_features(spec.name, version["version_id"])
        if feature_set["status"] != "READY":
            print(f"features FAILED: {feature_set['reason']}")
            return 1
        print(
            f"READY: {feature_set['row_count']:,} rows x {len(feature_set['features'])} "
            f"float32 features in {feature_set['data_key']}"
        )
        card = _card(card_rows, spec)
        online = client.card_features(spec.name, version["version_id"], card)
    truth = pd.read_csv(truth_path, dtype={"true_win_probability": float})
    _print_card(card_rows, online, truth)
    print(f"\ndone in {time.monotonic() - started:.1f} s; state in {state_dir}")
    return 0 if bad_status == "REJECTED" else 1


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


def _print_card(rows: Any, online: dict[str, Any], truth: Any) -> None:
    shown = [
        "horse_runs",
        "horse_position_mean_5",
        "horse_days_since_last",
        "jockey_win_rate",
        "weight_kg_rank",
        "odds_rank",
    ]
    columns = [online["features"].index(name) for name in shown]
    race = rows["race_id"].iloc[0]
    chance = truth[truth["race_id"] == race].set_index("horse_id")["true_win_probability"]
    print(
        f"\nthe held-back race {race} ({rows['race_time'].iloc[0]}), as its card's feature "
        "rows (from the entity snapshot), with the result nobody could know before:"
    )
    header = (
        f"{'horse':<9}" + "".join(f"{n:>23}" for n in shown) + f"{'true win %':>12}{'finish':>8}"
    )
    print(header)
    for (_, runner), values in zip(rows.iterrows(), online["rows"], strict=True):
        cells = "".join(
            f"{'—' if values[c] is None else format(values[c], '.3g'):>23}" for c in columns
        )
        print(
            f"{runner['horse_id']:<9}{cells}{100 * chance[runner['horse_id']]:>11.1f}%"
            f"{runner['position']:>8}"
        )


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

    import pandas as pd

    from gallop.features.build import build_features
    from gallop.features.plan import FeatureSpecError
    from gallop.spec import load_spec
    from gallop.training.runner import TrainingFailed, holdout_split, train_locally

    started = time.monotonic()
    spec = _load_spec(args.spec, load_spec)
    history = _canonical_or_report(args.data, spec)
    held = _canonical_or_report(args.test, spec) if args.test else None
    # Test races get their features from the history before them, as they would live.
    everything = pd.concat([history, held]) if held is not None else history
    try:
        built = build_features(everything.reset_index(drop=True), spec)
    except FeatureSpecError as exc:
        raise _UserError(f"features: {exc}") from None
    print(f"{len(built.frame):,} rows x {len(built.plan.features)} features", flush=True)
    try:
        if held is not None:
            is_test = built.frame[spec.group].isin(set(held[spec.group]))
            train, test = built.frame[~is_test], built.frame[is_test]
        else:
            train, test = holdout_split(built.frame, built.manifest)
        model_dir = train_locally(
            train,
            test,
            built.manifest,
            args.out / "work",
            progress=lambda line: print(line, flush=True),
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
