"""Drift of a model's live inputs and scores from its training reference (numpy only).

Per feature, the rows served are compared with the model's reference sample
(gallop.monitoring.reference) in three ways:
- PSI over the reference's decile bins, missing values a bin of their own: how far the
  distribution moved, whatever the sample sizes (flagged past a fixed threshold);
- the two-sample Kolmogorov-Smirnov test: whether it moved at all, beyond chance (flagged
  below alpha / m, Bonferroni over the m tests of the table, so that a window of unchanged
  rows raises no flag with probability at least 1 - alpha);
- the share of missing values, and for categorical features the share of rows whose text
  the model's vocabulary does not hold (coding makes those missing too).
The model's scores are checked like a feature: the "(score)" row.

Rows of one group (the runners of a race) are not independent: a race's distance, going
and field size are the same for all of them, so a window of 5,000 runners carries the
information of some 500 races on those features. A KS test that counted runners would
flag them in almost every window of unchanged races. So each side's sample size is
divided by its design effect (Kish), 1 + (k - 1) * ICC, with k the mean group size a
row sees and ICC the intra-group correlation of the feature (one-way ANOVA estimate on
the rows' reference deciles, floored at 0): ~1 for per-runner features, ~k for per-race
ones. Rows without a group id are taken as independent. Other ties (a jockey's rides in
one window share the jockey's record) are not corrected for; the known-answer tests
measure what is left (tests/integration/test_drift_known_answers.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from gallop.settings import Settings

SCORE = "(score)"  # the drift table's row for the model's scores

# A bin's share is floored at this before PSI takes its logarithm: an empty bin (on
# either side) would otherwise make PSI infinite. 1e-4 is below any share a reference of
# up to 20,000 rows can hold but zero, so it only ever stands in for "empty", and it
# bounds one bin's part of PSI to about q * ln(q / 1e-4) (0.46 for q = 5 %).
PSI_EPSILON = 1e-4


class Captured(Protocol):
    """What drift needs of the rows served (gallop.monitoring.capture.CapturedRows has it):
    features float32 [n, f] in the model's order (NaN for missing), score [n], and each
    row's group id (None for none). `categories` (feature -> the texts sent, None for
    none) is read when present."""

    features: np.ndarray
    score: np.ndarray
    group: np.ndarray


class ReferenceView(Protocol):
    """What drift reads of a model's reference (gallop.monitoring.reference.Reference):
    per feature, in the model's order, the sorted present values, the decile cuts, the
    missing share and the design effect of the sample's groups; the same of the scores;
    the categorical features' vocabularies."""

    features: list[str]
    categorical: dict[str, list[str]]

    @property
    def sorted_values(self) -> list[np.ndarray]: ...
    @property
    def edges(self) -> list[np.ndarray]: ...
    @property
    def missing_share(self) -> np.ndarray: ...
    @property
    def design_effects(self) -> np.ndarray: ...
    @property
    def sorted_scores(self) -> np.ndarray: ...
    @property
    def score_design_effect(self) -> float: ...


class DriftInputError(ValueError):
    pass


def drift_table(reference: ReferenceView, captured: Captured, settings: Settings) -> list[dict]:
    """One row per feature of the model (its order), then the "(score)" row:
    {"feature", "psi", "ks_statistic", "ks_p", "ks_p_threshold", "flagged",
     "missing_share", "reference_missing_share", "unseen_share"}.
    ks_statistic and ks_p are None where a side has no value; unseen_share is None but
    for categorical features whose texts were captured."""
    live = np.asarray(captured.features, dtype=np.float32)
    names = reference.features
    if live.ndim != 2 or live.shape[1] != len(names):
        raise DriftInputError(
            f"captured features have shape {live.shape}; the reference has {len(names)} features"
        )
    if not len(live):  # every share would be 0: as far as can be from any reference
        raise DriftInputError("no captured rows to compare with the reference")
    score = np.asarray(captured.score, dtype=np.float64).reshape(-1)
    if len(score) != len(live):
        raise DriftInputError(f"{len(score)} scores for {len(live)} captured rows")
    groups = group_codes(np.asarray(captured.group, dtype=object).reshape(-1), len(live))
    texts: Mapping[str, Any] = getattr(captured, "categories", None) or {}

    rows = [
        _compare(
            name,
            reference.sorted_values[j],
            reference.edges[j],
            reference.missing_share[j],
            reference.design_effects[j],
            live[:, j],
            groups,
        )
        for j, name in enumerate(names)
    ]
    rows.append(
        _compare(
            SCORE,
            reference.sorted_scores,
            decile_edges(reference.sorted_scores),
            0.0,
            reference.score_design_effect,
            score,
            groups,
        )
    )
    for row in rows[:-1]:
        vocabulary = reference.categorical.get(row["feature"])
        sent = texts.get(row["feature"])
        row["unseen_share"] = (
            unseen_share(np.asarray(sent, dtype=object), vocabulary)
            if vocabulary is not None and sent is not None
            else None
        )
    row_score = rows[-1]
    row_score["unseen_share"] = None

    tests = sum(row["ks_p"] is not None for row in rows)
    threshold = settings.drift_ks_alpha / max(tests, 1)
    for row in rows:
        row["ks_p_threshold"] = threshold
        row["flagged"] = bool(
            row["psi"] > settings.drift_psi_threshold
            or (row["ks_p"] is not None and row["ks_p"] < threshold)
        )
    return [{key: row[key] for key in ROW_KEYS} for row in rows]


ROW_KEYS = (
    "feature",
    "psi",
    "ks_statistic",
    "ks_p",
    "ks_p_threshold",
    "flagged",
    "missing_share",
    "reference_missing_share",
    "unseen_share",
)


def _compare(
    name: str,
    reference_sorted: np.ndarray,
    edges: np.ndarray,
    reference_missing: float,
    reference_deff: float,
    values: np.ndarray,
    groups: np.ndarray | None,
) -> dict[str, Any]:
    present = ~np.isnan(values)
    n, live = len(values), values[present].astype(np.float64)
    missing = float(1 - present.mean()) if n else 0.0
    live_sorted = np.sort(live)  # searches look up sorted values: much faster
    row: dict[str, Any] = {
        "feature": name,
        "missing_share": missing,
        "reference_missing_share": float(reference_missing),
        "psi": psi(
            bin_shares(reference_sorted, edges, reference_missing),
            bin_shares(live_sorted, edges, missing),
        ),
        "ks_statistic": None,
        "ks_p": None,
    }
    if len(live) and len(reference_sorted):
        statistic = ks_statistic(reference_sorted, live_sorted)
        in_groups = groups[present] if groups is not None else None
        deff = design_effect(decile_of(live, edges), in_groups)
        row["ks_statistic"] = statistic
        row["ks_p"] = ks_p_value(
            statistic, len(reference_sorted) / reference_deff, len(live) / deff
        )
    return row


def decile_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin among the reference's deciles: its place in the reference
    distribution, as coarse as PSI sees it; how alike a group's rows are is measured on
    it (it is cheap for many rows, and what KS compares is places, not values)."""
    return np.searchsorted(edges, values, side="right").astype(np.float64)


# --- PSI ------------------------------------------------------------------------------


def decile_edges(sorted_present: np.ndarray) -> np.ndarray:
    """The cut points of the reference's decile bins: its nine inner deciles, each a
    value it holds (so a feature with few values gets a bin per value), ties merged. A
    value at a cut goes above it; the outer bins are open, so a live value beyond the
    reference's range falls in the first (below its 10th percentile: empty when that is
    its minimum) or the last."""
    if not len(sorted_present):
        return np.empty(0)
    deciles = np.quantile(
        sorted_present.astype(np.float64), np.arange(1, 10) / 10, method="inverted_cdf"
    )
    return np.unique(deciles)


def bin_shares(sorted_present: np.ndarray, edges: np.ndarray, missing_share: float) -> np.ndarray:
    """The share of all rows in each bin (a value at a cut goes above it), then the
    missing share, from the present values sorted."""
    n = len(sorted_present)
    below = np.searchsorted(sorted_present, edges, side="left")
    counts = np.diff(np.concatenate([[0], below, [n]]))
    shares = counts / n * (1 - missing_share) if n else np.zeros(len(counts))
    return np.append(shares, missing_share)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index, sum((a - e) * ln(a / e)) over bins, each share floored
    at PSI_EPSILON (bins empty on both sides add nothing)."""
    e = np.maximum(expected, PSI_EPSILON)
    a = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


# --- Kolmogorov-Smirnov ---------------------------------------------------------------


def ks_statistic(first_sorted: np.ndarray, second_sorted: np.ndarray) -> float:
    """sup |F1 - F2| of the two empirical distribution functions (right-continuous steps,
    so ties count as they do in SciPy). Looked up at the smaller sample's points only:
    F_big - F_small rises only at the big sample's points, so its largest value is just
    below one of the small sample's points (or 0 past the last); F_small - F_big rises
    only at the small sample's points, so its largest is at one of them."""
    small, big = sorted((first_sorted, second_sorted), key=len)
    n, m = len(small), len(big)
    below = np.searchsorted(big, small, side="left") / m - np.arange(n) / n
    # at a point, the small sample's own ties all count: its rank is the last tie's
    at_or_below = np.searchsorted(small, small, side="right") / n - (
        np.searchsorted(big, small, side="right") / m
    )
    return float(max(0.0, below.max(), at_or_below.max()))


def ks_p_value(statistic: float, n1: float, n2: float) -> float:
    """P(D >= statistic) for two samples of (effective) sizes n1 and n2, from the
    asymptotic Kolmogorov distribution with Stephens' small-sample correction:
        p = Q_KS((sqrt(Ne) + 0.12 + 0.11 / sqrt(Ne)) * D),  Ne = n1 n2 / (n1 + n2)
    (Stephens 1970; Numerical Recipes 3rd ed., section 14.3.3, eq. 14.3.18). Good to about
    1e-3 once Ne is past a few tens; for tied (discrete) values it is conservative."""
    if n1 <= 0 or n2 <= 0:
        raise DriftInputError("KS needs two non-empty samples")
    root = math.sqrt(n1 * n2 / (n1 + n2))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)


def kolmogorov_sf(z: float) -> float:
    """Q_KS(z) = 1 - P_KS(z), Kolmogorov's limiting distribution of sqrt(n) D:
        Q_KS(z) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 z^2)
    converges fast for z >= 1.18; below, the equivalent (Jacobi theta) form does:
        P_KS(z) = sqrt(2 pi) / z * sum_{j>=1} exp(-(2j - 1)^2 pi^2 / (8 z^2))
    (Numerical Recipes 3rd ed., eqs. 6.14.56-57). Terms past the fourth are below 1e-16."""
    if z <= 0:
        return 1.0
    j = np.arange(1, 9)
    if z < 1.18:
        terms = np.exp(-((2 * j - 1) ** 2) * math.pi**2 / (8 * z * z))
        p = math.sqrt(2 * math.pi) / z * float(np.sum(terms))
        return float(min(1.0, max(0.0, 1.0 - p)))
    signs = np.where(j % 2 == 1, 1.0, -1.0)
    q = 2.0 * float(np.sum(signs * np.exp(-2.0 * j**2 * z * z)))
    return float(min(1.0, max(0.0, q)))


# --- Groups ---------------------------------------------------------------------------


def group_codes(groups: np.ndarray, n: int) -> np.ndarray | None:
    """Whole-number codes of the rows' group ids (a row without one is a group of its
    own), or None when no row has a group."""
    if len(groups) != n:
        raise DriftInputError(f"{len(groups)} group ids for {n} captured rows")
    absent = np.fromiter((g is None for g in groups), dtype=bool, count=n)
    if absent.all():
        return None
    text = np.where(absent, "", groups).astype(str)
    _, codes = np.unique(text, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    codes[absent] = codes.max() + 1 + np.arange(int(absent.sum()))
    return codes


def design_effect(values: np.ndarray, groups: np.ndarray | None) -> float:
    """Kish's design effect of a mean over rows in groups, 1 + (k - 1) * ICC, k the mean
    size of the group a row is in (sum n_g^2 / N) and ICC the one-way ANOVA estimate
        ICC = (MSB - MSW) / (MSB + (k0 - 1) MSW),  k0 = (N - sum n_g^2 / N) / (G - 1)
    floored at 0 (rows of a group more alike than chance make the sample worth fewer
    rows; less alike, as ranks within a race, worth no more). `groups`: whole-number
    codes (group_codes); 1 without them."""
    if groups is None or len(values) < 3:
        return 1.0
    counts = np.bincount(groups)
    used = counts > 0
    sizes = counts[used]
    n, g = len(values), len(sizes)
    if g < 2 or g == n:
        return 1.0
    x = values.astype(np.float64)
    means = np.zeros(len(counts))
    means[used] = np.bincount(groups, weights=x, minlength=len(counts))[used] / sizes
    between = float(np.sum(sizes * (means[used] - x.mean()) ** 2))
    within = float(np.sum((x - means[groups]) ** 2))
    msb, msw = between / (g - 1), within / (n - g)
    squares = float(np.sum(sizes.astype(np.float64) ** 2))
    k0 = (n - squares / n) / (g - 1)
    if msb + (k0 - 1) * msw <= 0:
        return 1.0
    icc = min(1.0, max(0.0, (msb - msw) / (msb + (k0 - 1) * msw)))
    return 1.0 + (squares / n - 1.0) * icc


# --- Categories -----------------------------------------------------------------------


def unseen_share(texts: np.ndarray, vocabulary: list[str]) -> float:
    """The share of rows whose text (not None, not empty) the vocabulary does not hold."""
    if not len(texts):
        return 0.0
    absent = np.fromiter((text is None for text in texts), dtype=bool, count=len(texts))
    sent = np.where(absent, "", texts).astype(str)
    unseen = (sent != "") & ~np.isin(sent, np.asarray(vocabulary, dtype=str))
    return float(unseen.mean())
