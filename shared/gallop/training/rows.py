"""The rows a job learns from or is judged on, built the same way in the base and stack
jobs (so their margins line up row for row), with every label a base kind may learn.

Rows of a group are contiguous (sorted by group, stably). Training rows of a ranking task
leave out groups of a single row: they hold no comparison to learn from (a walkover, a
query with one document); they are counted, and still scored when evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from gallop.manifests import FeatureManifest
from gallop.models.meta import Target
from gallop.training.outcomes import race_results


@dataclass(frozen=True)
class Rows:
    frame: pd.DataFrame
    manifest: FeatureManifest
    left_out_groups: int = 0  # single-row groups left out of training
    features: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        matrix = self.frame[self.manifest["features"]].to_numpy(dtype=np.float32)
        object.__setattr__(self, "features", matrix)

    @classmethod
    def of(cls, frame: pd.DataFrame, manifest: FeatureManifest, training: bool) -> Rows:
        group = manifest.get("group")
        frame = frame.reset_index(drop=True)
        if not group:
            return cls(frame, manifest)
        frame = frame.sort_values([group], kind="mergesort").reset_index(drop=True)
        left_out = 0
        if training and manifest["task"] == "ranking":
            sizes = frame.groupby(group, sort=False)[group].transform("size")
            lone = sizes.to_numpy() < 2
            left_out = int(lone.sum())  # one row each
            frame = frame[~lone].reset_index(drop=True)
        return cls(frame, manifest, left_out)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def group(self) -> str | None:
        return self.manifest.get("group") or None

    @cached_property
    def sizes(self) -> np.ndarray | None:
        if not self.group:
            return None
        return self.frame.groupby(self.group, sort=False).size().to_numpy()

    @cached_property
    def group_index(self) -> np.ndarray:
        """Each row's group as 0..groups-1 (each row its own group without a group column)."""
        if self.sizes is None:
            return np.arange(len(self.frame))
        return np.repeat(np.arange(len(self.sizes)), self.sizes)

    @cached_property
    def target(self) -> np.ndarray:
        """The target as given: a finishing position or grade, 0/1, or the value."""
        return self.frame[self.manifest["target"]].to_numpy(dtype=np.float64)

    @cached_property
    def _results(self) -> tuple[np.ndarray, np.ndarray]:
        return race_results(self.frame, self.manifest)

    @property
    def share(self) -> np.ndarray:
        """Ranking: the row's share of its group's win (0 in a group with no winner)."""
        return self._results[0] if self.task == "ranking" else self.target

    @property
    def relevance(self) -> np.ndarray:
        """Ranking: the graded relevance NDCG and LambdaRank use."""
        return self._results[1]

    @property
    def graded(self) -> bool:
        return self.manifest.get("target_order") == "descending"

    @cached_property
    def gain_share(self) -> np.ndarray | None:
        """Relevance grades: each row's share of its group's gain 2^grade - 1, the mix's
        target (None for finishing positions)."""
        if self.task != "ranking" or not self.graded:
            return None
        assert self.sizes is not None  # ranking rows come in groups
        gain = 2.0**self.relevance - 1.0
        total = np.repeat(np.add.reduceat(gain, _starts(self.sizes)), self.sizes)
        return gain / np.maximum(total, 1e-12)

    def label(self, name: str) -> np.ndarray:
        """The label a base kind learns (gallop.models.catalogue.LABELS)."""
        if self.task != "ranking" or name == "target":
            return self.target
        if name == "relevance":
            return self.relevance
        if name == "won":
            return (self.share > 0).astype(np.float64)
        if name == "share":
            return self.share
        if name == "position":
            if self.graded:
                # Relevance grades share one scale across queries already; ranking them
                # within a query would make every document of an all-irrelevant query first.
                return self.relevance
            # Finishing positions: 1 for the winner down to 0 for the last, whatever the field.
            group = self.frame[self.group]
            size = group.map(group.value_counts()).to_numpy(dtype=np.float64)
            rank = (
                self.frame.groupby(self.group)[self.manifest["target"]]
                .rank(ascending=True, method="min")
                .to_numpy()
            )
            return 1.0 - (rank - 1) / np.maximum(size - 1, 1)
        raise ValueError(f"unknown label {name!r}")

    @cached_property
    def categorical(self) -> list[int]:
        """Positions of the categorical features (codes) among the features."""
        names = self.manifest.get("categorical") or {}
        return [i for i, name in enumerate(self.manifest["features"]) if name in names]

    def meta_target(self) -> Target:
        """What a meta-learner is fitted to and judged on, for these rows."""
        if self.task != "ranking":
            return Target(self.task, self.target)
        return Target("ranking", self.share, self.sizes, self.relevance, self.gain_share)

    def take(self, mask: np.ndarray) -> Rows:
        """The rows where `mask` holds, whole groups only (as folds are made)."""
        return Rows(self.frame[mask].reset_index(drop=True), self.manifest)

    def identifiers(self) -> pd.DataFrame:
        present = [c for c in self.manifest.get("identifiers") or [] if c in self.frame]
        return self.frame[present]


def _starts(sizes: np.ndarray | None) -> np.ndarray:
    assert sizes is not None
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def combined(train: pd.DataFrame, test: pd.DataFrame | None) -> pd.DataFrame:
    """Every row the registered model is refit on: the training rows, then the held-out."""
    return train if test is None else pd.concat([train, test], ignore_index=True)
