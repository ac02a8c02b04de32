"""The selection rule on numbers worked out by hand (see each test's comment)."""

import math

import numpy as np
import pytest

from common.selection import (
    SelectionError,
    delta_means,
    delta_weights,
    delta_window,
    uniform_weights,
    window_position,
)

INIT = [5.0] * 10


def _cur(deltas):
    return [5.0 - d for d in deltas]


def _in_window(weights):
    floor = weights[weights > 0].min()
    return sorted(np.flatnonzero(weights > floor + 1e-12).tolist())


def test_middle_update_places_window_at_half():
    # U=3, k=2: t/T = 0.5, u = 0.5, start = int(0.5 * (10 - 2)) = 4, end = 6.
    # Ranking by delta: 3, 0, 5, 9, 1, 8, 2, 7, 4, 6 -> ranks 4 and 5 are samples 1 and 8.
    deltas = [1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6]
    window, w = delta_weights(INIT, _cur(deltas), update_index=2, update_times=3)
    assert (window.t, window.T, window.u, window.start, window.end) == (1, 2, 0.5, 4, 6)
    assert window.truncated_at is None
    assert _in_window(w) == [1, 8]
    assert w[1] == pytest.approx(1 / 2.2) and w[0] == pytest.approx(0.025 / 2.2)
    assert w.sum() == pytest.approx(1.0)


def test_negative_deltas_truncate_the_window_end():
    # U=3, k=3: u = 1/(1+e^-5) = 0.99331, start = int(0.99331 * 8) = 7, end = 9.
    # Ranking: 3, 0, 5, 9, 8, 2, 7, 6, 4(-0.1), 1(-0.5): first negative rank 8 -> end = 8.
    deltas = [1.0, -0.5, 0.3, 2.0, -0.1, 0.7, 0.0, 0.2, 0.4, 0.6]
    window, w = delta_weights(INIT, _cur(deltas), update_index=3, update_times=3)
    assert (window.start, window.end, window.truncated_at) == (7, 8, 8)
    assert _in_window(w) == [6]
    assert w[6] == pytest.approx(1 / 1.225)


def test_all_deltas_negative_empty_the_window():
    deltas = [-0.1 * (i + 1) for i in range(10)]
    window, w = delta_weights(INIT, _cur(deltas), update_index=2, update_times=3)
    assert window.truncated_at == 0 and window.end == 0 and window.start == 4
    np.testing.assert_allclose(w, np.full(10, 0.1))


def test_ties_rank_by_sample_index():
    window, w = delta_weights(INIT, _cur([0.5] * 10), update_index=2, update_times=3)
    assert (window.start, window.end) == (4, 6)
    assert _in_window(w) == [4, 5]


def test_small_n_where_int_truncation_matters():
    # N=3, s=0.2: sN = 0.6000000000000001, start = int(0.5 * 2.4) = 1, end = int(1.6) = 1.
    window, w = delta_weights([3.0] * 3, [2.0, 1.0, 0.0], update_index=2, update_times=3)
    assert (window.start, window.end) == (1, 1)
    np.testing.assert_allclose(w, np.full(3, 1 / 3))
    # N=7, s=0.3: sN = 2.1, start = int(0.5 * 4.9) = 2, end = int(4.1) = 4.
    deltas = [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    window, w = delta_weights([1.0] * 7, [1.0 - d for d in deltas], 2, 3, window_size=0.3)
    assert (window.start, window.end) == (2, 4)
    assert _in_window(w) == [2, 3]


def test_window_size_zero_and_one():
    deltas = [1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6]
    window, w = delta_weights(INIT, _cur(deltas), 2, 3, window_size=0.0)
    assert window.start == window.end == 5  # int(0.5 * 10)
    np.testing.assert_allclose(w, np.full(10, 0.1))
    window, w = delta_weights(INIT, _cur(deltas), 2, 3, window_size=1.0)
    assert (window.start, window.end) == (0, 10)
    np.testing.assert_allclose(w, np.full(10, 0.1))
    # Window over everything but cut where deltas turn negative: ranks 0..7 of 10.
    window, w = delta_weights(INIT, _cur([*deltas[:8], -1.0, -2.0]), 3, 3, window_size=1.0)
    assert (window.start, window.end, window.truncated_at) == (0, 8, 8)
    assert _in_window(w) == list(range(8))


def test_first_and_last_update_of_a_longer_schedule():
    deltas = [1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6]
    # k=2 of U=5: t/T = 0.25, u = 1/(1+e^2.5) = 0.075858, start = int(0.607) = 0, end = 2.
    window, w = delta_weights(INIT, _cur(deltas), 2, 5)
    assert window.u == pytest.approx(1 / (1 + math.exp(2.5)))
    assert (window.start, window.end) == (0, 2)
    assert _in_window(w) == [0, 3]
    # k=5 of U=5: t/T = 1, u = 0.993307, start = int(7.946) = 7, end = 9: samples 7, 4.
    window, w = delta_weights(INIT, _cur(deltas), 5, 5)
    assert (window.start, window.end) == (7, 9)
    assert _in_window(w) == [4, 7]


def test_non_finite_losses_get_zero_weight_and_are_not_ranked():
    # Sample 1 has no initial loss, sample 2 a NaN current loss: 8 samples are ranked.
    init = [5.0, None, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    cur = _cur([1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6])
    cur[2] = float("nan")
    window, w = delta_weights(init, cur, 2, 3)
    assert window.n_ranked == 8
    assert w[1] == 0 and w[2] == 0
    # N stays 10: start = int(0.5 * 8) = 4, end = 6 over the ranking of the 8 finite deltas,
    # 3, 0, 5, 9, 8, 7, 4, 6 -> ranks 4 and 5 are samples 8 and 7.
    assert (window.start, window.end) == (4, 6)
    assert _in_window(w) == [7, 8]
    # At the last update the window reaches past the 8 ranked samples: rank 7 alone is in it.
    window, w = delta_weights(init, cur, 3, 3)
    assert (window.start, window.end) == (7, 9)
    assert _in_window(w) == [6]
    assert uniform_weights([1.0, None, float("inf"), 2.0]).tolist() == [0.5, 0.0, 0.0, 0.5]


@pytest.mark.parametrize(
    ("k", "u_times", "size", "message"),
    [
        (1, 0, 0.2, "update_times is 0"),
        (0, 3, 0.2, "outside 1..3"),
        (4, 3, 0.2, "outside 1..3"),
        (2, 3, 1.5, r"within \[0, 1\]"),
    ],
)
def test_impossible_updates_are_refused(k, u_times, size, message):
    with pytest.raises(SelectionError, match=message):
        window_position(k, u_times, 10, size)


def test_mismatched_lengths_and_no_finite_loss_are_refused():
    with pytest.raises(SelectionError, match="10 samples"):
        delta_weights(INIT, [1.0], 2, 3)
    with pytest.raises(SelectionError, match="no sample"):
        delta_weights([None, None], [1.0, 1.0], 2, 3)


def test_window_end_comes_from_the_unrounded_start():
    # N=999, s=0.2, U=4, k=2: u = 1/(1+e^(5/3)) = 0.158869, u (N - sN) = 126.968,
    # start = int(126.968) = 126, end = int(126.968 + 199.8) = int(326.768) = 326
    # (rounding the start first would give int(126 + 199.8) = 325, one sample short).
    t, big_t, u, start, end = window_position(2, 4, 999, 0.2)
    assert (t, big_t) == (1, 3)
    assert u == pytest.approx(1 / (1 + math.exp(5 / 3)))
    assert (start, end) == (126, 326)


def test_update_one_of_a_later_epoch_sits_at_the_schedule_start():
    # k=1 of U=3: t = 0, u = 1/(1+e^5) = 0.0066929, start = int(0.0535) = 0, end = int(2.05) = 2.
    deltas = [1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6]
    window, w = delta_weights(INIT, _cur(deltas), update_index=1, update_times=3)
    assert (window.t, window.T) == (0, 2)
    assert window.u == pytest.approx(1 / (1 + math.exp(5)))
    assert (window.start, window.end) == (0, 2)
    assert _in_window(w) == [0, 3]  # the two largest loss reductions


def test_one_update_per_epoch_places_the_window_at_the_start():
    # U=1: T = 0, t/T is taken as 0 (the schedule's start) rather than dividing by zero.
    t, big_t, u, start, end = window_position(1, 1, 10, 0.2)
    assert (t, big_t) == (0, 0)
    assert u == pytest.approx(1 / (1 + math.exp(5)))
    assert (start, end) == (0, 2)


def _published_window(k, update_times, n, window_size):
    """The published selector's own arithmetic, written out independently: the sigmoid of
    (k-1)/(U-1) scales N - sN, and both ends are truncated from that unrounded offset."""
    x = (k - 1) / (update_times - 1)
    offset = 1 / (1 + np.exp(-10 * (x - 0.5))) * (n - window_size * n)
    return int(offset), int(offset + window_size * n)


@pytest.mark.parametrize("n", [3, 10, 97, 999, 1000, 100_000, 123_457])
@pytest.mark.parametrize("window_size", [0.0, 0.05, 0.2, 0.3, 1 / 3, 1.0])
@pytest.mark.parametrize("update_times", [2, 3, 4, 7, 30])
def test_window_matches_the_published_arithmetic(n, window_size, update_times):
    for k in range(1, update_times + 1):
        *_, start, end = window_position(k, update_times, n, window_size)
        assert (start, end) == _published_window(k, update_times, n, window_size), k


def test_mean_loss_reduction_inside_and_outside_the_window():
    # the window of test_middle_update_places_window_at_half: samples 1 and 8 (0.5, 0.4);
    # outside: the other eight, (1.0 + 0.3 + 2.0 + 0.1 + 0.7 + 0.0 + 0.2 + 0.6) / 8 = 0.6125
    deltas = np.array([1.0, 0.5, 0.3, 2.0, 0.1, 0.7, 0.0, 0.2, 0.4, 0.6])
    window, ranking = delta_window(INIT, _cur(deltas), update_index=2, update_times=3)
    inside, outside = delta_means(deltas, window, ranking)
    assert inside == pytest.approx(0.45) and outside == pytest.approx(0.6125)
    # unranked samples (no finite delta) count on neither side; an empty window has no mean
    deltas[3] = np.nan
    window, ranking = delta_window(INIT, _cur(deltas), 2, 3, window_size=0.0)
    assert delta_means(deltas, window, ranking) == (None, pytest.approx(3.8 / 9))
