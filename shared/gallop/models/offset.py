"""An offset: a feature added to a boosted model's margin as it stands, so that the trees
learn only what it misses (the market's log implied chance of winning, for a kind
boosted from the market). numpy only: the serving side explains with it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Offset:
    """The feature at `feature` times `scale`, added to the margin (a missing value as
    `fill`)."""

    feature: int
    fill: float  # a missing value's stand-in: the training rows' median
    # The training rows' mean: an explanation gives the feature value - centre, and the
    # centre to the base value, so that a runner is judged against the average runner.
    centre: float = 0.0
    # The feature's weight as the training rows judge it alone: a market's favourites
    # may win more (or less) often than its prices say.
    scale: float = 1.0

    def values(self, features: np.ndarray) -> np.ndarray:
        column = np.asarray(features[:, self.feature], dtype=np.float64)
        return self.scale * np.where(np.isnan(column), self.fill, column)

    def explained(self, parts: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The parts [n, features (+ 1, the base value)] of the margin without the offset,
        with the offset's part added."""
        parts[:, self.feature] += self.values(features) - self.centre
        if parts.shape[1] > features.shape[1]:
            parts[:, -1] += self.centre
        return parts

    @classmethod
    def learn(cls, features: np.ndarray, feature: int, scale: float = 1.0) -> Offset:
        column = features[:, feature].astype(np.float64)
        seen = column[~np.isnan(column)]
        # float32, as the graph holds them
        fill = float(np.float32(np.median(seen))) if len(seen) else 0.0
        scale = float(np.float32(scale))
        filled = np.where(np.isnan(column), fill, column)
        centre = float(scale * filled.mean()) if len(column) else 0.0
        return cls(feature, fill, centre, scale)
