"""Categorical columns as model inputs. A column's text becomes a whole-number code: its
place in a vocabulary learnt from the training rows. Missing or unseen text is missing
(NaN), which a category split sends where an unlisted code goes. numpy only: cards and
/v1/predict encode with it on the predict path."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

# A column with more distinct values than this keeps its most frequent ones; the rest are
# missing. Bounds the manifest, and a category seen a handful of times teaches nothing.
MAX_CATEGORIES = 1000


def learn_vocabulary(texts: np.ndarray, times: np.ndarray | None = None) -> list[str]:
    """The distinct non-empty texts (the most frequent MAX_CATEGORIES, ties by text), in the
    order they first appear in time (ties by text). New texts in later rows take the next
    codes, so appended rows leave every code the history holds as it was."""
    return vocabulary_of_counts(*count_categories(texts, times))


Counts = tuple[np.ndarray, np.ndarray, np.ndarray]  # sorted texts, row counts, first times


def count_categories(texts: np.ndarray, times: np.ndarray | None = None) -> Counts:
    """Each distinct non-empty text (sorted), how many rows have it and the earliest time
    one does (0 for all without times): all a vocabulary is learnt from, so that counts
    kept with a snapshot learn the vocabulary of the data plus new rows exactly without
    reading the data again."""
    texts = np.asarray(texts, dtype=str)
    present = texts != ""
    values, where, counts = np.unique(texts[present], return_inverse=True, return_counts=True)
    first = np.zeros(len(values), dtype=np.int64)
    if times is not None and len(values):
        first[:] = np.iinfo(np.int64).max
        np.minimum.at(first, where.reshape(-1), np.asarray(times, dtype=np.int64)[present])
    return values, counts.astype(np.int64), first


def merge_counts(first: Counts, second: Counts) -> Counts:
    """The counts of two sets of rows together."""
    texts = np.concatenate([np.asarray(first[0], dtype=str), np.asarray(second[0], dtype=str)])
    values, where = np.unique(texts, return_inverse=True)
    where = where.reshape(-1)
    weights = np.concatenate([first[1], second[1]]).astype(np.int64)
    counts = np.bincount(where, weights=weights, minlength=len(values)).astype(np.int64)
    earliest = np.full(len(values), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(earliest, where, np.concatenate([first[2], second[2]]).astype(np.int64))
    return values, counts, earliest


def vocabulary_of_counts(values: np.ndarray, counts: np.ndarray, first: np.ndarray) -> list[str]:
    """learn_vocabulary's answer from count_categories' counts."""
    values, first = np.asarray(values, dtype=str), np.asarray(first, dtype=np.int64)
    if len(values) > MAX_CATEGORIES:
        kept = np.lexsort((values, -np.asarray(counts)))[:MAX_CATEGORIES]
        values, first = values[kept], first[kept]
    return [str(v) for v in values[np.lexsort((values, first))]]


def encode(texts: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """float32 codes: the text's place in the vocabulary, NaN where absent."""
    texts = np.asarray(texts, dtype=str)
    if not len(vocabulary):
        return np.full(len(texts), np.nan, dtype=np.float32)
    known, places = _lookup(tuple(vocabulary))
    at = np.minimum(np.searchsorted(known, texts), len(known) - 1)
    return np.where(known[at] == texts, places[at], np.nan).astype(np.float32)


@lru_cache(maxsize=64)
def _lookup(vocabulary: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The vocabulary sorted, and each sorted text's code: made once per vocabulary (race
    cards encode with the same few on every request)."""
    known = np.asarray(vocabulary, dtype=str)
    order = np.argsort(known, kind="stable")
    return known[order], order


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
