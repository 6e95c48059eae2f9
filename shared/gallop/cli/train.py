"""gallop train: the stack trained locally, its SageMaker jobs run in subprocesses."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gallop.cli.common import (
    Failed,
    UserError,
    add_format,
    add_json,
    emit_json,
    load_spec,
    progress,
)
from gallop.cli.features import canonical
from gallop.extras import require
from gallop.layout import MANIFEST_FILE, ONNX_FILE, REPORT_HTML_FILE
from gallop.manifests import ModelManifest, kind_of_metrics_key, read_model_manifest


def add(commands: Any) -> None:
    p = commands.add_parser(
        "train", help="train the stack locally: the SageMaker jobs, in subprocesses"
    )
    p.add_argument("--data", required=True, help="history: CSV, Parquet, JSONL, or - for stdin")
    add_format(p, "--data and --test")
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for the model artifact")
    p.add_argument(
        "--test",
        default=None,
        help="held-out races (default: the last fifth of the races by time)",
    )
    p.add_argument(
        "--bases",
        default=None,
        help="comma-separated base models (default by task; e.g. lambdarank,linear)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds for the whole run: each boosted base searches its hyperparameters and "
        "fits its folds within its share; the same data, seed and limit give the same model "
        "bytes",
    )
    p.add_argument(
        "--set",
        dest="hyperparameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter (repeatable): of every base job, e.g. num_boost_round=300, or "
        "of the stack job: meta_l2, calibration=isotonic, coverage=0.8, bet_margin, "
        "kelly_fraction",
    )
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    require("train", "gallop train")  # the jobs run in subprocesses: check here, not there
    import shutil

    import numpy as np
    import pandas as pd

    from gallop.features.build import build_features
    from gallop.features.plan import FeatureSpecError
    from gallop.settings import get_settings
    from gallop.training.config import CostBounds, hyperparameter_problems, split_hyperparameters
    from gallop.training.runner import TrainingFailed, holdout_split, train_locally

    chosen = hyperparameters(args.hyperparameters)
    if args.time_limit is not None:
        chosen["time_limit"] = args.time_limit
    problems = hyperparameter_problems(chosen, CostBounds.of(get_settings()))
    if problems:
        raise UserError("; ".join(map(str, problems)))
    base_settings, stack_settings = split_hyperparameters(chosen)
    started = time.monotonic()
    spec = load_spec(args.spec)
    history = _valid(args.data, args.format, spec)
    held = _valid(args.test, args.format, spec) if args.test else None
    # Test races get their features from the history before them, as they would live.
    if held is not None and spec.group:
        shared = sorted(set(history[spec.group]) & set(held[spec.group]), key=str)
        if shared:  # LETOR-style files number their queries from 1 in each file
            raise Failed(
                f"--test shares {len(shared)} {spec.group} ids with --data (e.g. "
                f"{', '.join(map(str, shared[:5]))}): a group must be in one file only"
            )
    everything = pd.concat([history, held]) if held is not None else history
    try:
        built = build_features(everything.reset_index(drop=True), spec)
    except FeatureSpecError as exc:
        raise UserError(f"features: {exc}") from None
    progress(f"{len(built.frame):,} rows x {len(built.plan.features)} features")
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
            bases=bases(args.bases, spec.task.value),
            progress=progress,
            base_hyperparameters=base_settings,
            stack_hyperparameters=stack_settings,
        )
    except TrainingFailed as exc:
        raise Failed(f"training failed: {exc}") from None
    for path in model_dir.iterdir():
        shutil.copy2(path, args.out / path.name)
    manifest = read_model_manifest(json.loads((args.out / MANIFEST_FILE).read_text()))
    if args.json:
        emit_json(
            {
                "model": str(args.out / ONNX_FILE),
                "report": str(args.out / REPORT_HTML_FILE),
                "seconds": round(time.monotonic() - started, 1),
                **{k: manifest.get(k) for k in ("evaluated_on", "rows", "metrics")},
                **{k: manifest.get(k) for k in ("base_models", "betting", "onnx_parity")},
            }
        )
        return 0
    print_metrics(manifest)
    print(
        f"model: {args.out / ONNX_FILE} (ONNX equals the native stack within "
        f"{max(manifest['onnx_parity'].values()):.1e}); {time.monotonic() - started:.0f} s"
    )
    print(f"report: {args.out / REPORT_HTML_FILE}")
    return 0


def _valid(name: str, fmt: str | None, spec: Any) -> Any:
    table, problems = canonical(name, fmt, spec)
    if table is None:
        for problem in problems:
            progress(f"  ✗ [{problem.code}] {problem.message}")
        raise UserError(f"{name} is not valid data for this spec (see above)")
    return table


def bases(text: str | None, task: str) -> tuple[str, ...] | None:
    from gallop.training.config import BadRunConfig, bases_for

    if text is None:
        return None
    try:
        return tuple(bases_for(task, [b.strip() for b in text.split(",") if b.strip()]))
    except BadRunConfig as exc:
        raise UserError(str(exc)) from None


def hyperparameters(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs; values read as JSON where they are (numbers, true), else text."""
    from gallop.training.contract import decode

    chosen = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise UserError(f"--set {pair!r}: write NAME=VALUE, e.g. num_boost_round=300")
        chosen[name.strip()] = decode(value.strip())
    return chosen


def print_metrics(manifest: ModelManifest) -> None:
    metrics = manifest["metrics"]
    models = [kind_of_metrics_key(name) for name in metrics]
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
