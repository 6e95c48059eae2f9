"""How often the demo's stack is below its best base in hindsight, over generator seeds:

    .venv/bin/python -m benchmarks.stack_seeds [--races 2000] [--seeds 1 2 3 4 5 6 7]

For each seed, `gallop train` on `gallop synth`'s races with the shipped spec and every
default (the demo's configuration; seed 7 is the demo's own), then, on the held-out last
fifth of the races: the stack's race log loss and NDCG@1 beside its best base's (the best
of several bases picked after seeing the held-out figures, which favours the bases) and
beside the base the out-of-fold selection ranks first (what a user without hindsight
would pick). Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gallop.cli import SHIPPED_SPEC
from gallop.synth.races import write_races

GALLOP = Path(sys.executable).with_name("gallop")


def train(races: int, seed: int, work: Path) -> dict[str, Any]:
    data, _ = write_races(races, seed, work / f"races-{seed}.csv")
    out = work / f"model-{seed}"
    done = subprocess.run(
        [str(GALLOP), "train", "--data", str(data), "--spec", str(SHIPPED_SPEC), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: gallop train failed:\n{done.stderr[-2000:]}")
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def compare(manifest: dict[str, Any]) -> dict[str, float | str]:
    metrics = manifest["metrics"]
    stack = metrics["stack"]
    bases = {k.split("_", 2)[2]: v for k, v in metrics.items() if k != "stack"}
    best = min(bases, key=lambda b: bases[b]["race_log_loss"])
    best_ndcg = max(bases, key=lambda b: bases[b]["ndcg@1"])
    chosen = {k[5:]: v for k, v in manifest["meta"]["selection"].items() if k.startswith("base:")}
    picked = min(chosen, key=lambda b: chosen[b])
    return {
        "loss": stack["race_log_loss"] - bases[best]["race_log_loss"],
        "best": best,
        "loss_vs_picked": stack["race_log_loss"] - bases[picked]["race_log_loss"],
        "picked": picked,
        "ndcg1": stack["ndcg@1"] - bases[best_ndcg]["ndcg@1"],
        "meta": manifest["meta"]["chosen"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--races", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5, 6, 7])
    args = parser.parse_args()
    print(f"{args.races:,} races a seed; held out: the last fifth by time")
    print("race log loss: lower is better, so a stack below its base shows a positive gap")
    header = "seed  stack-best base (which)           stack-OOF pick (which)            "
    print(header + "NDCG@1 stack-best  meta")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            row = compare(train(args.races, seed, Path(tmp)))
            rows.append(row)
            print(
                f"{seed:>4}  {row['loss']:+.4f} ({row['best']:<24}) "
                f"{row['loss_vs_picked']:+.4f} ({row['picked']:<24}) "
                f"{row['ndcg1']:+.4f}            {row['meta']}",
                flush=True,
            )
    for key, label in [("loss", "best base"), ("loss_vs_picked", "OOF pick")]:
        gaps = [float(r[key]) for r in rows]
        wins = sum(g <= 0 for g in gaps)
        print(
            f"stack - {label}: mean {sum(gaps) / len(gaps):+.4f}, "
            f"not worse on {wins} of {len(gaps)} seeds"
        )


if __name__ == "__main__":
    main()
