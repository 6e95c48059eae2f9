"""The meta-learner: non-negative weights, fitted as a conditional logit per race."""

from __future__ import annotations

import numpy as np
import pytest

from gallop.models.stack import fit_conditional_logit, softmax_within_groups


def races(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 17, n)
    return sizes, rng.normal(size=(int(sizes.sum()), 3))


def draw_winners(strength: np.ndarray, sizes: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    performance = strength + rng.gumbel(size=len(strength))  # Gumbel: a softmax per race
    won = np.zeros(len(strength))
    start = 0
    for size in sizes:
        won[start + int(np.argmax(performance[start : start + size]))] = 1
        start += size
    return won


def test_probabilities_sum_to_one_in_every_race_even_with_huge_scores() -> None:
    sizes = np.array([1, 3, 5])
    score = np.array([700.0, 1.0, 2.0, 3.0, -800.0, 0.0, 0.0, 900.0, 1.0])
    p = softmax_within_groups(score, sizes)
    assert np.isfinite(p).all()
    assert np.allclose(np.add.reduceat(p, [0, 1, 4]), 1.0)
    assert p[0] == 1.0  # a race with one runner: probability 1


def test_recovers_the_weights_that_generated_the_winners() -> None:
    sizes, margins = races(1)
    true_weights = np.array([1.2, 0.5, 0.0])
    won = draw_winners(margins @ true_weights, sizes, seed=2)
    fitted = fit_conditional_logit(margins, won, sizes)
    assert np.allclose(fitted.weights, true_weights, atol=0.12), fitted.weights
    # And far better than knowing nothing (every runner equally likely).
    uniform = float(np.mean(np.log(sizes)))
    assert fitted.log_loss < uniform - 0.1


def test_a_base_model_that_points_the_wrong_way_gets_weight_zero() -> None:
    sizes, margins = races(3)
    won = draw_winners(margins @ np.array([1.0, -0.8, 0.3]), sizes, seed=4)
    fitted = fit_conditional_logit(margins, won, sizes)
    assert fitted.weights[1] == 0.0 and (fitted.weights >= 0).all()
    assert fitted.weights[0] > 0.5


def test_dead_heats_share_and_races_without_a_winner_are_ignored() -> None:
    sizes, margins = races(5, n=800)
    won = draw_winners(margins @ np.array([0.9, 0.0, 0.4]), sizes, seed=6)
    won[: sizes[0]] = 0  # the first race has no result
    won[sizes[0] : sizes[0] + 2] = 1  # the second race: a dead heat
    fitted = fit_conditional_logit(margins, won, sizes)
    assert np.isfinite(fitted.log_loss) and fitted.weights[0] > fitted.weights[1]
    with pytest.raises(ValueError, match="no race has a winner"):
        fit_conditional_logit(margins, np.zeros(len(won)), sizes)
