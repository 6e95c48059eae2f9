"""An offset: a feature added to a boosted model's margin as it stands, so that the trees
learn only what it misses (the market's log implied chance of winning, for a kind
boosted from the market). numpy only: the serving side explains with it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Offset:
    """The feature at `feature`, added to the margin (a missing value as `fill`)."""

    feature: int
    fill: float  # a missing value's stand-in: the training rows' median
    # The training rows' mean: an explanation gives the feature value - centre, and the
    # centre to the base value, so that a runner is judged against the average runner.
    centre: float = 0.0

    def values(self, features: np.ndarray) -> np.ndarray:
        column = np.asarray(features[:, self.feature], dtype=np.float64)
        return np.where(np.isnan(column), self.fill, column)

    def explained(self, parts: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The parts [n, features (+ 1, the base value)] of the margin without the offset,
        with the offset's part added."""
        parts[:, self.feature] += self.values(features) - self.centre
        if parts.shape[1] > features.shape[1]:
            parts[:, -1] += self.centre
        return parts

    @classmethod
    def learn(cls, features: np.ndarray, feature: int) -> Offset:
        column = features[:, feature].astype(np.float64)
        seen = column[~np.isnan(column)]
        # float32, as the graph holds it
        fill = float(np.float32(np.median(seen))) if len(seen) else 0.0
        offset = cls(feature, fill)
        return cls(feature, fill, float(offset.values(features).mean()) if len(column) else 0.0)


def market_offset(manifest: dict[str, Any], features: np.ndarray) -> Offset | None:
    """The offset of a kind boosted from the market: the odds' log implied probability
    among the features, when the data has odds."""
    name = f"{manifest.get('odds')}_log_implied"
    if not manifest.get("odds") or name not in manifest["features"]:
        return None
    return Offset.learn(features, manifest["features"].index(name))
