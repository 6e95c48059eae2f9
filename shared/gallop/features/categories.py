"""Categorical columns as model inputs. A column's text becomes a whole-number code: its
place in a vocabulary learnt from the training rows. Missing or unseen text is missing
(NaN), which a category split sends where an unlisted code goes. numpy only: cards and
/v1/predict encode with it on the predict path."""

from __future__ import annotations

from typing import Any

import numpy as np

# A column with more distinct values than this keeps its most frequent ones; the rest are
# missing. Bounds the manifest, and a category seen a handful of times teaches nothing.
MAX_CATEGORIES = 1000


def learn_vocabulary(texts: np.ndarray) -> list[str]:
    """The distinct non-empty texts (the most frequent MAX_CATEGORIES, ties by text), sorted."""
    values, counts = np.unique(texts[texts != ""], return_counts=True)
    if len(values) > MAX_CATEGORIES:
        values = values[np.lexsort((values, -counts))[:MAX_CATEGORIES]]
    return sorted(str(v) for v in values)


def encode(texts: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """float32 codes: the text's place in the (sorted) vocabulary, NaN where absent."""
    known = np.asarray(vocabulary, dtype=str)
    texts = np.asarray(texts, dtype=str)
    if not len(known):
        return np.full(len(texts), np.nan, dtype=np.float32)
    place = np.minimum(np.searchsorted(known, texts), len(known) - 1)
    found = known[place] == texts
    return np.where(found, place, np.nan).astype(np.float32)


def key_text(value: Any) -> str:
    """A key or category as ingestion writes it: text as sent, a whole number without
    '.0' (11.0 from a CSV read as numbers is jockey '11'), "" when missing."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def code_of(value: Any, index: dict[str, int]) -> float | None:
    """One JSON value's code (None when missing or unseen), read as key_text reads it."""
    if type(value) is str:  # the usual case, looked up as it is (key_text's own answer)
        code = index.get(value)
    elif isinstance(value, bool):
        return None
    else:
        code = index.get(key_text(value))
    return None if code is None else float(code)
