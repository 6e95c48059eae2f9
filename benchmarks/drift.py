"""Drift over 100,000 captured rows of the races model: the drift part of the monitor's
budget (the whole monitor: <= 10 s and <= 1 GB on 2 cores).

    .venv/bin/python -m benchmarks.drift [--rows 100000] [--races 12000]

Set-up (not timed): generated races, their features, a small model trained through the
real training code, its reference built as reference_for builds it (20,000 rows scored by
the ONNX graph; timed apart: a model's first check only), and the captured rows: whole
races, with the model's scores, as gallop.monitoring.capture would read them back.
Then a fresh process (so that its peak memory is the check's own) loads the reference
file and the rows and runs drift_table, as the monitor does on every check. Figures are
printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not carry
    over the parent's peak through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check(folder: Path) -> dict[str, Any]:
    """One drift check in this process: load the reference and the rows, then the table."""
    started = time.perf_counter()
    from gallop.monitoring.drift import drift_table
    from gallop.monitoring.reference import Reference
    from gallop.settings import Settings

    imported = time.perf_counter()
    reference = Reference.from_bytes((folder / "reference.npz").read_bytes())
    with np.load(folder / "captured.npz", allow_pickle=False) as stored:
        rows = Rows(stored["features"], stored["score"], stored["group"].astype(object))
    loaded = time.perf_counter()
    table = drift_table(reference, rows, Settings())
    done = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "table_s": done - loaded,
        "total_s": done - started,
        "peak_mb": peak_mb(),
        "rows": len(rows.score),
        "features": len(reference.features),
        "flagged": [row["feature"] for row in table if row["flagged"]],
    }


class Rows:
    def __init__(self, features: np.ndarray, score: np.ndarray, group: np.ndarray) -> None:
        self.features, self.score, self.group = features, score, group


def prepare(folder: Path, n_rows: int, n_races: int) -> dict[str, float]:
    from gallop.features.build import build_features
    from gallop.ingest.validate import validate
    from gallop.monitoring.reference import build_reference, sample_groups
    from gallop.serving.model import LoadedModel
    from gallop.spec import load_spec
    from gallop.synth.races import generate_races
    from gallop.training.runner import holdout_split, train_locally

    spec = load_spec(SPEC)
    runners, _ = generate_races(n_races, seed=5)
    built = build_features(validate(runners.astype(str), spec).canonical, spec)
    frame = built.frame
    train, test = holdout_split(frame, built.manifest)
    model_dir = train_locally(
        train,
        test,
        built.manifest,
        folder / "model",
        bases=("lambdarank",),
        progress=lambda _: None,
        base_hyperparameters={"num_boost_round": 20, "folds": 2},
        stack_hyperparameters={"run_id": "bench", "data_version": "v1", "code_version": "c1"},
    )
    model = LoadedModel.from_dir(model_dir)
    started = time.perf_counter()
    reference = build_reference(frame, model)
    built_s = time.perf_counter() - started
    (folder / "reference.npz").write_bytes(reference.to_bytes())

    _, races = np.unique(frame["race_id"].to_numpy(dtype=str), return_inverse=True)
    rows = sample_groups(races.reshape(-1), n_rows, seed=1)
    features = np.ascontiguousarray(frame[model.features].to_numpy(np.float32)[rows])
    np.savez(
        folder / "captured.npz",
        features=features,
        score=model.run(features)["score"][:, 0].astype(np.float64),
        group=frame["race_id"].to_numpy(dtype=str)[rows],
    )
    return {
        "reference_build_s": built_s,
        "reference_mb": (folder / "reference.npz").stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--races", type=int, default=12_000, help="about 10.5 runners a race")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(check(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"preparing {args.races:,} races, a model and {args.rows:,} captured rows ...")
        made = prepare(folder, args.rows, args.races)
        command = [sys.executable, "-m", "benchmarks.drift", "--child", str(folder)]
        figures = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    print(
        f"reference (first check only): built in {made['reference_build_s']:.2f} s, "
        f"{made['reference_mb']:.1f} MB stored"
    )
    print(
        f"drift check of {figures['rows']:,} rows x {figures['features']} features: "
        f"{figures['total_s']:.2f} s (imports {figures['import_s']:.2f} s, load "
        f"{figures['load_s']:.2f} s, drift_table {figures['table_s']:.2f} s), "
        f"peak RSS {figures['peak_mb']:,.0f} MB"
    )
    print(f"flagged: {figures['flagged'] or 'nothing'}")


if __name__ == "__main__":
    main()
