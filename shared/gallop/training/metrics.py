"""Ranking metrics, as LightGBM defines them."""

from __future__ import annotations

import numpy as np


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean NDCG@k over groups; gain 2^rel - 1, discount log2(rank + 1); a group with no
    relevant item counts 1 (LightGBM's convention)."""
    total, start = 0.0, 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for size in groups:
        rel = relevance[start : start + size]
        order = np.argsort(-scores[start : start + size], kind="stable")[:k]
        ideal = np.sort(rel)[::-1][:k]
        best = float(((2.0**ideal - 1) * discounts[: len(ideal)]).sum())
        got = float(((2.0 ** rel[order] - 1) * discounts[: len(order)]).sum())
        total += got / best if best > 0 else 1.0
        start += size
    return total / len(groups)
