"""The scoring budget's rule, on hand-worked numbers and simulated runs."""

import numpy as np
import pytest

from common.budget import (
    BudgetError,
    Estimates,
    advance,
    choose,
    edge_distance,
    fit_drift,
    refresh_period,
    samples_per_checkpoint,
)
from common.selection import window_position


@pytest.mark.parametrize(
    ("budget", "n", "k"),
    [(1.0, 999, 999), (0.5, 999, 500), (0.1, 999, 100), (0.05, 999, 50), (0.001, 10, 1),
     (250, 999, 250), (5000, 999, 999), (2, 10, 2)],
)  # fmt: skip
def test_a_budget_is_a_rounded_up_fraction_or_a_count(budget, n, k):
    assert samples_per_checkpoint(budget, n) == k


@pytest.mark.parametrize("budget", [0.0, -0.5, 2.5, float("nan"), float("inf")])
def test_a_budget_that_means_nothing_is_refused(budget):
    with pytest.raises(BudgetError, match="score_budget"):
        samples_per_checkpoint(budget, 100)


def test_the_refresh_period_is_ceil_n_over_k():
    assert [refresh_period(999, k) for k in (999, 500, 100, 50, 1)] == [1, 2, 10, 20, 999]


def test_the_drift_maps_the_estimates_onto_the_mean_and_spread_of_the_pairs():
    before = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, np.nan])
    now = 0.05 + 1.5 * before  # the NaN pair is left out
    drift = fit_drift(before, now)
    assert (drift.shift, drift.slope, drift.pairs) == (pytest.approx(0.05), pytest.approx(1.5), 8)


def test_few_pairs_or_a_reversed_order_fit_only_the_shift():
    few = fit_drift(np.array([0.1, 0.3]), np.array([0.3, 0.4]))
    assert (few.shift, few.slope, few.pairs) == (pytest.approx(0.15), 1.0, 2)
    before = np.linspace(0.0, 1.0, 10)
    reversed_ = fit_drift(before, 1.0 - before)  # a map that would turn the order round
    assert reversed_.slope == 1.0 and reversed_.shift == pytest.approx(np.mean(1 - 2 * before))
    assert fit_drift(np.array([]), np.array([])).pairs == 0


def test_advance_keeps_the_measured_and_carries_the_others_by_the_drift():
    previous = Estimates(np.linspace(0.0, 0.9, 10), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    previous = Estimates(previous.delta, previous.age.astype(np.int32))
    measured = np.arange(0, 10, 2)  # 5 pairs: fewer than 8, so the shift alone
    delta = np.full(10, np.nan)
    delta[measured] = previous.delta[measured] + 0.1
    after, drift = advance(previous, measured, delta)
    assert drift.shift == pytest.approx(0.1) and drift.slope == 1.0
    np.testing.assert_allclose(after.delta, previous.delta + 0.1)
    assert after.age.tolist() == [0, 2, 0, 1, 0, 3, 0, 2, 0, 1]
    assert after.n_measured() == 5 and after.mean_age() == pytest.approx(9 / 5)


def test_a_full_pass_has_no_age():
    full = Estimates.measured_all(np.array([0.3, np.nan, 0.1]))
    assert full.age.tolist() == [0, 0, 0] and full.mean_age() is None and full.n_measured() == 3


def test_the_edge_distance_is_zero_at_the_window_edges():
    # 10 samples ranked 0..9 by delta 0.9 .. 0.0; update 2 of 3: t/T = 1/2, u = 0.5,
    # window of 2 ranks at int(0.5 * 8) = 4 .. 6: deltas 0.5 and 0.3 at its edges
    estimates = Estimates.measured_all(np.linspace(0.9, 0.0, 10))
    assert window_position(2, 3, 10, 0.2)[3:] == (4, 6)
    distance = edge_distance(estimates, 2, 3, 0.2)
    np.testing.assert_allclose(
        distance, [0.4, 0.3, 0.2, 0.1, 0.0, 0.1, 0.0, 0.1, 0.2, 0.3], atol=1e-12
    )
    older = Estimates(estimates.delta, np.full(10, 3, dtype=np.int32))  # divided by sqrt(4)
    np.testing.assert_allclose(edge_distance(older, 2, 3, 0.2), distance / 2, atol=1e-12)


def _simulate(n: int, k: int, checkpoints: int, seed: int = 0):
    """Choose and advance over random drifting reductions; the chosen sets in order."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.2, 0.05, n)
    state = Estimates.measured_all(truth)
    chosen_sets = []
    for c in range(checkpoints):
        truth = truth + rng.normal(0.01, 0.005, n)
        chosen = choose(state, k, update_index=1 + c % 5, update_times=5, window_size=0.2)
        chosen_sets.append(chosen)
        state, _ = advance(state, chosen, truth)
    return chosen_sets, state


@pytest.mark.parametrize(("n", "k"), [(999, 100), (999, 50), (100, 30), (97, 10), (50, 49)])
def test_every_sample_is_measured_again_within_the_period(n, k):
    period = refresh_period(n, k)
    chosen_sets, state = _simulate(n, k, checkpoints=3 * period + 2)
    last = np.full(n, -1)  # the full pass before the first chosen set
    for c, chosen in enumerate(chosen_sets):
        assert chosen.size == k and np.unique(chosen).size == k
        last[chosen] = c
        assert (c - last).max() <= period - 1  # no sample older than the period allows
    assert state.age.max() <= period - 1


def test_spare_budget_goes_to_the_samples_nearest_the_window_edges():
    # 10 samples, 4 per checkpoint: the period is 3, and a first cycle needs 10 - 2 * 4 = 2
    # measured now; the 2 others go to the nearest the edges (deltas 0.5 and 0.3 at ranks 4
    # and 6: samples 4 and 6), the due ones are spread over the ranking
    estimates = Estimates.measured_all(np.linspace(0.9, 0.0, 10))
    chosen = choose(estimates, 4, update_index=2, update_times=3, window_size=0.2)
    assert chosen.size == 4 and {4, 6} <= set(chosen.tolist())
    rest = sorted(set(chosen.tolist()) - {4, 6})
    assert rest[0] <= 2 and rest[1] >= 5  # one from the top of the ranking, one further down


def test_unranked_samples_are_never_chosen_and_a_budget_over_them_takes_all():
    estimates = Estimates.measured_all(np.array([0.1, np.nan, 0.3, 0.2, 0.5]))
    every = choose(estimates, 5, update_index=1, update_times=2, window_size=0.2)
    assert every.tolist() == [0, 2, 3, 4]
    some = choose(estimates, 2, update_index=1, update_times=2, window_size=0.2)
    assert some.size == 2 and 1 not in some.tolist()


def test_the_drift_keeps_the_spread_that_least_squares_would_shrink():
    """Noisy pairs: least squares' slope shrinks by the correlation; this map keeps the spread
    of the samples measured now, so the carried estimates are as spread as the measured."""
    rng = np.random.default_rng(1)
    merit = rng.normal(0.2, 0.05, 4000)  # what both measurements see, each with its own noise
    before = merit + rng.normal(0.0, 0.05, merit.size)
    now = 0.1 + merit + rng.normal(0.0, 0.05, merit.size)
    drift = fit_drift(before, now)
    carried = drift.shift + drift.slope * before
    assert np.std(carried) == pytest.approx(np.std(now))
    assert np.mean(carried) == pytest.approx(np.mean(now))
    assert drift.slope == pytest.approx(1.0, abs=0.05)
    assert np.polyfit(before, now, 1)[0] == pytest.approx(0.5, abs=0.05)  # least squares
