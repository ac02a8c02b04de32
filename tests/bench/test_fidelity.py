"""The fidelity replay on synthetic runs whose answer is known."""

import numpy as np

from bench import fidelity


def _run(shift: float, noise: float, seed: int = 0):
    """Losses of 200 samples over 12 checkpoints: each sample's reduction grows in proportion
    to its own rate (so the ranking never changes) plus noise; checkpoint 0 is the initial."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.5, 1.5, 200)
    initial = rng.uniform(2.0, 3.0, 200)
    steps = np.arange(12)[:, None]
    losses = initial - shift * steps * rate + rng.normal(0, noise, (12, 200)) * (steps > 0)
    index = np.arange(1, 13)
    return losses, index, 12


def test_a_stable_ranking_is_recovered_exactly_by_the_drift_map_and_not_by_stale_values():
    losses, index, update_times = _run(shift=0.02, noise=0.0)
    drift = fidelity.mean(
        fidelity.replay(losses, index, update_times, fidelity.POLICIES["drift"], 0.1)
    )
    naive = fidelity.mean(
        fidelity.replay(losses, index, update_times, fidelity.POLICIES["naive"], 0.1)
    )
    assert drift.jaccard == 1.0 and drift.tv < 1e-12 and drift.inside > 0.8
    assert naive.jaccard < 0.9  # stale reductions understate the grown ones


def test_a_full_pass_one_update_stale_is_exact_only_without_noise():
    losses, index, update_times = _run(shift=0.02, noise=0.0)
    exact = fidelity.mean(fidelity.replay(losses, index, update_times, fidelity.stale(1), 1.0))
    assert exact.jaccard == 1.0
    noisy, index, update_times = _run(shift=0.02, noise=0.05)
    moved = fidelity.mean(fidelity.replay(noisy, index, update_times, fidelity.stale(1), 1.0))
    assert moved.jaccard < 1.0 and moved.tv > 0


def test_the_bias_of_stale_values_is_positive_and_the_correction_removes_it():
    losses, index, update_times = _run(shift=0.02, noise=0.0)
    bias = fidelity.bias(losses, index, update_times, 0.1)
    assert bias["stale"] > 0.01 and abs(bias["corrected"]) < 1e-9
