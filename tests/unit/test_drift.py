"""Drift statistics with answers known in closed form or from SciPy: PSI, the two-sample
KS test and its p-value, the design effect of grouped rows, unseen categories, and the
drift table a check returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import stats

from gallop.monitoring.drift import (
    PSI_EPSILON,
    SCORE,
    DriftInputError,
    bin_shares,
    decile_edges,
    design_effect,
    drift_table,
    group_codes,
    kolmogorov_sf,
    ks_p_value,
    ks_statistic,
    psi,
    unseen_share,
)
from gallop.monitoring.reference import Reference, sample_groups
from gallop.settings import Settings


@dataclass
class Rows:
    """The part of gallop.monitoring.capture.CapturedRows that drift reads."""

    features: np.ndarray
    score: np.ndarray
    group: np.ndarray
    categories: dict[str, np.ndarray] = field(default_factory=dict)


def test_psi_is_the_sum_of_share_differences_times_log_ratios() -> None:
    expected = np.array([0.5, 0.3, 0.2, 0.0])
    actual = np.array([0.4, 0.4, 0.2, 0.0])
    by_hand = 0.1 * np.log(0.5 / 0.4) + 0.1 * np.log(0.4 / 0.3)
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-12)
    assert psi(expected, expected) == 0.0
    # An empty bin on one side counts with the floor share, not as an infinity
    assert psi(np.array([1.0, 0.0]), np.array([0.9, 0.1])) == pytest.approx(
        (0.9 - 1.0) * np.log(0.9) + (0.1 - PSI_EPSILON) * np.log(0.1 / PSI_EPSILON)
    )


def test_decile_bins_hold_a_tenth_of_the_reference_each_and_missing_has_its_own() -> None:
    reference = np.sort(np.random.default_rng(0).normal(size=10_000))
    edges = decile_edges(reference)
    assert len(edges) == 9
    shares = bin_shares(reference, edges, 0.0)
    np.testing.assert_allclose(shares, [0.1] * 10 + [0.0], atol=2e-4)
    # Beyond the reference's range: the outer bins; a fifth missing: the last bin
    live = np.array([-100.0, 0.0, 0.0, 100.0])  # and one missing
    shares = bin_shares(live, edges, 0.2)
    assert shares[0] == shares[-2] == pytest.approx(0.2) and shares[-1] == 0.2
    assert shares.sum() == pytest.approx(1.0)
    # Few distinct values: tied deciles merge, a bin per value (and one below, empty)
    assert list(decile_edges(np.sort(np.repeat([1.0, 2.0, 3.0], [50, 30, 20])))) == [1, 2, 3]


def test_psi_of_a_known_shift_matches_its_normal_closed_form() -> None:
    # GIVEN a reference N(0, 1) and live rows N(0.5, 1)
    rng = np.random.default_rng(1)
    reference = np.sort(rng.normal(size=200_000))
    live = np.sort(rng.normal(0.5, 1.0, 200_000))
    edges = decile_edges(reference)
    value = psi(bin_shares(reference, edges, 0.0), bin_shares(live, edges, 0.0))
    # THEN PSI is the binned symmetric KL divergence of the normal deciles
    cuts = np.r_[-np.inf, stats.norm.ppf(np.arange(1, 10) / 10), np.inf]
    e = np.diff(stats.norm.cdf(cuts))
    a = np.diff(stats.norm.cdf(cuts - 0.5))
    assert value == pytest.approx(float(np.sum((a - e) * np.log(a / e))), abs=3e-3)


@pytest.mark.parametrize(
    ("n1", "n2"), [(50, 60), (200, 300), (1000, 700), (5000, 2000), (20_000, 5000)]
)
def test_ks_statistic_and_p_value_agree_with_scipy(n1: int, n2: int) -> None:
    # GIVEN pairs of samples whose locations differ by about two standard errors of D
    rng = np.random.default_rng(n1 + n2)
    shift = 1.9 / np.sqrt(n1 * n2 / (n1 + n2)) / stats.norm.pdf(0)
    tails = 0
    for _ in range(12):
        a, b = rng.normal(size=n1), rng.normal(shift, 1.0, n2)
        statistic = ks_statistic(np.sort(a), np.sort(b))
        exact = stats.ks_2samp(a, b, method="exact")
        assert statistic == pytest.approx(exact.statistic, abs=1e-12)
        ours = ks_p_value(statistic, n1, n2)
        # THEN where drift is decided (p < 0.05, thresholds near 1e-3) the asymptotic
        # p-value is within 1e-3 of the exact one
        if exact.pvalue < 0.05:
            tails += 1
            assert ours == pytest.approx(exact.pvalue, abs=1e-3)
        # AND anywhere once samples are large (D's lattice is fine); small samples'
        # atoms put the limit a few hundredths off in the body (to 0.03 at 50 x 60)
        if n1 * n2 / (n1 + n2) >= 1000:
            assert ours == pytest.approx(exact.pvalue, abs=5e-3)
    assert tails >= 4  # the tail was reached


def test_ks_statistic_counts_ties_as_step_functions_do() -> None:
    a = np.array([1.0, 1.0, 2.0, 3.0])
    b = np.array([1.0, 2.0, 2.0, 2.0])
    # F_a(1) = 0.5, F_b(1) = 0.25; F_a(2) = 0.75, F_b(2) = 1.0
    assert ks_statistic(a, b) == ks_statistic(b, a) == 0.25
    # Discrete values, samples of either size first, D at either end
    rng = np.random.default_rng(8)
    for n1, n2 in [(30, 700), (700, 30), (500, 501)]:
        for _ in range(20):
            x = np.sort(rng.integers(0, 6, n1).astype(float))
            y = np.sort(rng.integers(0, 6, n2).astype(float) + rng.integers(0, 2))
            assert ks_statistic(x, y) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)


def test_the_kolmogorov_distribution_is_continuous_where_its_two_series_meet() -> None:
    assert kolmogorov_sf(0.0) == 1.0 and kolmogorov_sf(10.0) < 1e-80
    for z in (0.3, 0.8, 1.0, 1.18, 1.5, 2.0):
        assert kolmogorov_sf(z) == pytest.approx(stats.kstwobign.sf(z), abs=1e-12)
    assert kolmogorov_sf(1.18 - 1e-12) == pytest.approx(kolmogorov_sf(1.18), abs=1e-9)
    with pytest.raises(DriftInputError):
        ks_p_value(0.1, 0, 10)


def test_the_design_effect_is_the_group_size_for_a_per_group_value_and_one_for_noise() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(5, 17, 800)
    groups = np.repeat(np.arange(800), sizes)
    per_group = np.repeat(rng.normal(size=800), sizes)
    per_row = rng.normal(size=len(groups))
    mean_size = float(np.sum(sizes**2) / np.sum(sizes))  # the size of a row's group
    assert design_effect(per_group, groups) == pytest.approx(mean_size, rel=1e-9)
    assert design_effect(per_row, groups) == pytest.approx(1.0, abs=0.15)
    # Ranks within the group are less alike than chance: worth no more than rows
    ranks = np.concatenate([np.arange(s) / s for s in sizes])
    assert design_effect(ranks, groups) == 1.0
    # Half group, half row: ICC 1/2
    half = per_group + per_row
    assert design_effect(half, groups) == pytest.approx(1 + (mean_size - 1) * 0.5, rel=0.1)
    assert design_effect(per_group, None) == 1.0
    assert design_effect(per_row, np.arange(len(per_row))) == 1.0


def test_group_codes_keep_rows_without_a_group_apart() -> None:
    codes = group_codes(np.array(["r1", None, "r2", "r1", None], dtype=object), 5)
    assert codes is not None
    assert codes[0] == codes[3] and len({codes[1], codes[4], codes[0], codes[2]}) == 4
    assert group_codes(np.array([None, None], dtype=object), 2) is None
    with pytest.raises(DriftInputError):
        group_codes(np.array(["a"], dtype=object), 2)


def test_unseen_share_counts_texts_the_vocabulary_lacks_over_all_rows() -> None:
    texts = np.array(["good", "heavy", None, "", "firm", "mud"], dtype=object)
    assert unseen_share(texts, ["firm", "good", "soft"]) == pytest.approx(2 / 6)
    assert unseen_share(np.array([], dtype=object), ["firm"]) == 0.0


def test_whole_groups_are_sampled_deterministically_up_to_the_size() -> None:
    groups = np.repeat(np.arange(100), 10)
    taken = sample_groups(groups, 255)
    assert len(taken) == 250 and np.array_equal(taken, sample_groups(groups, 255))
    assert np.all(np.bincount(groups[taken]) % 10 == 0)  # no group split
    assert np.array_equal(sample_groups(groups, 5000), np.arange(1000))


def small_reference(rng: np.random.Generator, rows: int = 6000) -> Reference:
    """Three features: a per-row normal, a per-group value, and a coded category."""
    sizes = rng.integers(5, 17, rows // 8)
    groups = np.repeat(np.arange(len(sizes)), sizes)[:rows]
    values = np.column_stack(
        [
            rng.normal(size=len(groups)),
            np.repeat(rng.normal(size=len(sizes)), sizes)[: len(groups)],
            rng.integers(0, 3, len(groups)).astype(float),
        ]
    ).astype(np.float32)
    values[rng.random(len(groups)) < 0.05, 0] = np.nan
    return Reference(
        model_id="m-r1",
        features=["speed", "going_code", "colour"],
        values=values,
        groups=groups,
        scores=values[:, 1].astype(np.float64) + rng.normal(size=len(groups)),
        categorical={"colour": ["red", "green", "blue"]},
    )


def window_of(rng: np.random.Generator, n_groups: int, shift: float = 0.0) -> Rows:
    sizes = rng.integers(5, 17, n_groups)
    n = int(sizes.sum())
    per_group = np.repeat(rng.normal(size=n_groups), sizes)
    features = np.column_stack(
        [rng.normal(shift, 1.0, n), per_group, rng.integers(0, 3, n)]
    ).astype(np.float32)
    features[rng.random(n) < 0.05, 0] = np.nan
    colour = np.array(["red", "green", "blue"], dtype=object)[features[:, 2].astype(int)]
    colour[:10] = "mauve"  # sent, never seen: coded missing
    features[:10, 2] = np.nan
    return Rows(
        features=features,
        score=per_group + rng.normal(size=n),
        group=np.repeat(np.array([f"g{i}" for i in range(n_groups)], dtype=object), sizes),
        categories={"colour": colour},
    )


def test_the_drift_table_flags_a_shifted_feature_and_nothing_else() -> None:
    rng = np.random.default_rng(3)
    reference = small_reference(rng)
    settings = Settings(drift_psi_threshold=0.25, drift_ks_alpha=0.05)
    # GIVEN a window where the per-row feature moved by one standard deviation
    table = drift_table(reference, window_of(rng, 500, shift=1.0), settings)
    by = {row["feature"]: row for row in table}
    # THEN the rows are the decided ones, features in order then the score
    assert [row["feature"] for row in table] == ["speed", "going_code", "colour", SCORE]
    assert set(table[0]) == {
        "feature",
        "psi",
        "ks_statistic",
        "ks_p",
        "ks_p_threshold",
        "flagged",
        "missing_share",
        "reference_missing_share",
        "unseen_share",
    }
    assert by["speed"]["flagged"] and by["speed"]["psi"] > 0.25 and by["speed"]["ks_p"] < 1e-9
    assert not by["going_code"]["flagged"] and by["going_code"]["psi"] < 0.1
    assert not by["colour"]["flagged"] and not by[SCORE]["flagged"]
    assert table[0]["ks_p_threshold"] == pytest.approx(0.05 / 4)  # 3 features and the score
    assert by["speed"]["missing_share"] == pytest.approx(0.05, abs=0.01)
    assert by["speed"]["reference_missing_share"] == pytest.approx(0.05, abs=0.01)
    assert by["colour"]["unseen_share"] > 0 and by["speed"]["unseen_share"] is None


def test_the_per_group_feature_is_judged_by_its_groups_not_its_rows() -> None:
    # GIVEN unchanged windows: a per-race value seen by all of a race's runners
    rng = np.random.default_rng(4)
    reference = small_reference(rng)
    settings = Settings(drift_ks_alpha=0.05)
    flagged = [
        drift_table(reference, window_of(rng, 400), settings)[1]["flagged"] for _ in range(60)
    ]
    # THEN it is flagged about as often as alpha allows (counting runners as independent
    # flags it in most windows: the p-values would be those of 10x the races)
    assert np.mean(flagged) <= 0.1


def test_a_window_the_reference_cannot_be_compared_with_is_refused() -> None:
    rng = np.random.default_rng(6)
    reference = small_reference(rng, rows=500)
    settings = Settings()
    window = window_of(rng, 10)
    with pytest.raises(DriftInputError, match="3 features"):
        drift_table(reference, Rows(window.features[:, :2], window.score, window.group), settings)
    with pytest.raises(DriftInputError, match="scores"):
        drift_table(reference, Rows(window.features, window.score[:-1], window.group), settings)
    with pytest.raises(DriftInputError, match="no captured rows"):
        drift_table(
            reference, Rows(window.features[:0], window.score[:0], window.group[:0]), settings
        )
    # A feature missing in every live row: PSI says so, KS has nothing to test
    empty = window.features.copy()
    empty[:, 0] = np.nan
    table = drift_table(reference, Rows(empty, window.score, window.group), settings)
    assert table[0]["ks_p"] is None and table[0]["missing_share"] == 1.0 and table[0]["flagged"]
    assert table[1]["ks_p_threshold"] == pytest.approx(settings.drift_ks_alpha / 3)


def test_a_reference_survives_its_file() -> None:
    reference = small_reference(np.random.default_rng(7), rows=300)
    reference.source = {"dataset": "races", "sample_rows": 300}
    again = Reference.from_bytes(reference.to_bytes())
    np.testing.assert_array_equal(again.values, reference.values)
    np.testing.assert_array_equal(again.groups, reference.groups)
    np.testing.assert_array_equal(again.scores, reference.scores)
    assert again.features == reference.features and again.categorical == reference.categorical
    assert again.source == reference.source and again.model_id == "m-r1"
    with pytest.raises(ValueError, match="not a drift reference"):
        Reference.from_bytes(b"not an npz")
