"""Feature extraction on >= 1,000,000 generated runner rows, against a naive pandas baseline.

    .venv/bin/python benchmarks/features_1m.py [--races 96000]

Each side runs in a fresh process that loads the same canonical Parquet, so wall time
and peak memory (max RSS of that process) compare like with like. The baseline is the
straightforward pandas way to write the shipped spec's rolling and career features:
groupby().shift().rolling() and expanding sums. It is not point-in-time correct for
keys with several rows at one time (a jockey's rides in one race see each other);
gallop's engine is. Figures are printed, not asserted.
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

SPEC = Path(__file__).resolve().parents[1] / "shared" / "gallop" / "specs" / "races.yaml"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_gallop(data: Path, out: Path) -> dict:
    import pandas as pd

    from gallop.features.build import build_features
    from gallop.spec import load_spec

    spec = load_spec(SPEC)
    canonical = pd.read_parquet(data)
    loaded_mb = peak_mb()
    started = time.perf_counter()
    built = build_features(canonical, spec)
    seconds = time.perf_counter() - started
    built.frame[["race_id", "horse_id", *BASELINE_COLUMNS]].to_parquet(out)
    return {
        "seconds": seconds,
        "rows": len(built.frame),
        "features": len(built.plan.features),
        "peak_mb": peak_mb(),
        "loaded_mb": loaded_mb,
    }


BASELINE_COLUMNS = [
    f"horse_position_{s}_{w}" for w in (3, 5, 10) for s in ("mean", "min", "max", "count", "last")
]
BASELINE_COLUMNS += [
    "horse_beaten_share_mean_5",
    "jockey_position_mean_10",
    "horse_runs",
    "horse_wins",
]


def run_pandas(data: Path, out: Path) -> dict:
    import pandas as pd

    df = pd.read_parquet(data)
    loaded_mb = peak_mb()
    started = time.perf_counter()
    df = df.sort_values(["race_time", "race_id"], kind="mergesort")
    df["field_size"] = df.groupby("race_id")["race_id"].transform("size")
    df["beaten_share"] = df["position"] / df["field_size"]
    horse = df.groupby("horse_id")
    previous = horse["position"].shift(1)
    for w in (3, 5, 10):
        rolled = previous.groupby(df["horse_id"]).rolling(w, min_periods=1)
        for stat in ("mean", "min", "max", "count"):
            df[f"horse_position_{stat}_{w}"] = getattr(rolled, stat)().reset_index(0, drop=True)
        df[f"horse_position_last_{w}"] = previous
    share = horse["beaten_share"].shift(1).groupby(df["horse_id"]).rolling(5, min_periods=1)
    df["horse_beaten_share_mean_5"] = share.mean().reset_index(0, drop=True)
    jockey_previous = df.groupby("jockey_id")["position"].shift(1)
    jockey = jockey_previous.groupby(df["jockey_id"]).rolling(10, min_periods=1).mean()
    df["jockey_position_mean_10"] = jockey.reset_index(0, drop=True)
    df["horse_runs"] = horse.cumcount()
    won = (df["position"] == 1).astype(float)
    df["horse_wins"] = won.groupby(df["horse_id"]).cumsum() - won
    seconds = time.perf_counter() - started
    df[["race_id", "horse_id", *BASELINE_COLUMNS]].to_parquet(out)
    return {
        "seconds": seconds,
        "rows": len(df),
        "features": len(BASELINE_COLUMNS),
        "peak_mb": peak_mb(),
        "loaded_mb": loaded_mb,
    }


def child(kind: str, data: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--data", str(data), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=96_000)
    parser.add_argument("--child", choices=["gallop", "pandas"])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        run = run_gallop if args.child == "gallop" else run_pandas
        print(json.dumps(run(args.data, args.out)))
        return

    from gallop.ingest.validate import validate
    from gallop.spec import load_spec
    from gallop.synth.races import generate_races

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        runners, _ = generate_races(args.races, seed=1)
        checked = validate(runners.astype(str), load_spec(SPEC))
        assert checked.canonical is not None
        data = Path(tmp) / "canonical.parquet"
        checked.canonical.to_parquet(data)
        print(
            f"prepared {len(runners):,} runner rows ({args.races:,} races) in "
            f"{time.perf_counter() - started:.0f} s"
        )
        results = {
            kind: child(kind, data, Path(tmp) / f"{kind}.parquet") for kind in ("gallop", "pandas")
        }
        agreement = compare(Path(tmp) / "gallop.parquet", Path(tmp) / "pandas.parquet")

    print(f"{'':<34}{'wall s':>8}{'rows/s':>12}{'peak MB':>9}{'features':>10}")
    for kind, label in (
        ("gallop", "gallop (shipped race spec)"),
        ("pandas", "pandas groupby().rolling()"),
    ):
        r = results[kind]
        print(
            f"{label:<34}{r['seconds']:>8.1f}{r['rows'] / r['seconds']:>12,.0f}"
            f"{r['peak_mb']:>9,.0f}{r['features']:>10}"
        )
    print(
        f"(peak MB includes ~{results['gallop']['loaded_mb']:,.0f} MB for Python, pandas and "
        "the loaded data)"
    )
    print(
        f"speed-up: {results['pandas']['seconds'] / results['gallop']['seconds']:.1f}x "
        f"while computing {results['gallop']['features']} features instead of "
        f"{results['pandas']['features']}"
    )
    print(agreement)


def compare(ours: Path, theirs: Path) -> str:
    """Where both are point-in-time (horse keys: one row per time), they must agree."""
    import numpy as np
    import pandas as pd

    a = pd.read_parquet(ours).set_index(["race_id", "horse_id"]).sort_index()
    b = pd.read_parquet(theirs).set_index(["race_id", "horse_id"]).sort_index()
    horse = [c for c in BASELINE_COLUMNS if c.startswith("horse_")]
    diff = np.nanmax(np.abs(a[horse].to_numpy(np.float64) - b[horse].to_numpy(np.float64)))
    same_nan = (a[horse].isna().to_numpy() == b[horse].isna().to_numpy()).all()
    return (
        f"horse features, gallop vs baseline: max |difference| {diff:.2e} (float32 "
        f"rounding), missing in the same places: {same_nan}"
    )


if __name__ == "__main__":
    main()
