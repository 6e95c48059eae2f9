"""The LETOR sample in ../shared/data/letor/: svmlight rows and query sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LETOR = Path(__file__).resolve().parents[2] / "shared" / "data" / "letor"


def load_letor(name: str, width: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [n, width or the widest row], labels, query sizes) of
    rank.train or rank.test; absent values are 0, as LightGBM reads svmlight."""
    labels, rows = [], []
    for line in (LETOR / name).read_text().splitlines():
        label, *pairs = line.split()
        labels.append(float(label))
        rows.append({int(k): float(v) for k, v in (p.split(":") for p in pairs)})
    width = max(width, max(max(r) for r in rows if r) + 1)
    features = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        for column, value in row.items():
            features[i, column] = value
    return features, np.asarray(labels), np.loadtxt(LETOR / f"{name}.query", dtype=int)
