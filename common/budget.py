"""The scoring budget: which samples a checkpoint measures, and how the others are ranked.

Pure functions, no I/O. The published method measures every sample at every update. With a
budget of k samples per checkpoint (score_budget below 1, or a count), the run's initial
checkpoint and its first checkpoint with a window are still measured in full; each later
checkpoint measures k samples and ranks every sample on an estimated loss reduction:

- Which k: a sample must be measured again at least every ceil(n / k) scored checkpoints
  (its deadline). Samples whose deadline leaves no room are taken first (earliest deadline
  first), and the rest of the budget goes to the samples whose estimated rank lies nearest an
  edge of the window this checkpoint places (its start, its end, or the rank where loss
  reductions turn negative): only those can change weight (1.0 against 0.025). When the
  budget is exactly n / m for a whole m, deadlines take all of it and the order is fixed by
  the first cycle, which the edges choose.
- How the rest are ranked: a stale loss reduction understates the current one (training
  lowers losses). The samples measured now were estimated before, so they show how the
  estimates drifted: the affine map delta_now = a + b * estimate_before, fitted on them by
  their mean and spread, carries every unmeasured sample's estimate forward. It is increasing,
  so the unmeasured samples keep their order among themselves and the measured ones take
  their measured places among them; a drifts the estimates toward the current losses, which
  decides where the window is cut at the first negative reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.selection import window_over

MIN_PAIRS_FOR_SLOPE = 8  # fewer measured samples fit only the shift (b = 1)


class BudgetError(ValueError):
    """A score_budget that cannot be applied (the message says why)."""


def samples_per_checkpoint(budget: float, n: int) -> int:
    """The samples a checkpoint measures under `budget` of n candidates: a fraction in (0, 1]
    (rounded up), or a whole number of samples above 1 (at most n); 1 is every sample."""
    if not math.isfinite(budget) or budget <= 0:
        raise BudgetError(f"score_budget must be a fraction in (0, 1] or a count, got {budget}")
    if budget <= 1:
        return min(n, math.ceil(budget * n))
    if budget != int(budget):
        raise BudgetError(
            f"score_budget {budget} is above 1 but not a whole number of samples: give a "
            "fraction in (0, 1] or a count"
        )
    return min(n, int(budget))


def refresh_period(n: int, k: int) -> int:
    """Every sample is measured again at least every ceil(n / k) scored checkpoints."""
    return max(1, math.ceil(n / max(k, 1)))


@dataclass(frozen=True)
class Estimates:
    """What a budgeted run knows after a scored checkpoint: every sample's loss reduction
    (measured at this checkpoint, or estimated; NaN: not ranked) and its age (the scored
    checkpoints since it was measured: 0 for those measured at this one)."""

    delta: np.ndarray  # float64, N
    age: np.ndarray  # int32, N

    @classmethod
    def measured_all(cls, delta: np.ndarray) -> Estimates:
        """After a checkpoint measured in full."""
        delta = np.asarray(delta, dtype=np.float64)
        return cls(delta.copy(), np.zeros(delta.size, dtype=np.int32))

    def mean_age(self) -> float | None:
        """The mean age of the ranked samples not measured at this checkpoint (None: all were)."""
        stale = np.isfinite(self.delta) & (self.age > 0)
        return float(self.age[stale].mean()) if stale.any() else None

    def n_measured(self) -> int:
        return int(np.count_nonzero(self.age == 0))


@dataclass(frozen=True)
class Drift:
    """The affine map delta_now = shift + slope * estimate_before, fitted on the `pairs`
    samples measured now that had an estimate before."""

    shift: float
    slope: float
    pairs: int


def fit_drift(before: np.ndarray, now: np.ndarray) -> Drift:
    """The map that gives the estimates before the mean and spread the same samples have now
    (slope sd(now) / sd(before), the line through both means), fitted on the finite pairs.
    Least squares would shrink the estimates toward their mean by the correlation, and the
    samples carried by it would then crowd the middle of a ranking whose measured samples
    keep their full spread. Only the shift (slope 1) with fewer than MIN_PAIRS_FOR_SLOPE
    pairs, a constant estimate before, or reductions that moved against their order; the
    identity with no pair."""
    both = np.isfinite(before) & np.isfinite(now)
    x, y = before[both], now[both]
    if x.size == 0:
        return Drift(0.0, 1.0, 0)
    spread = x.size >= MIN_PAIRS_FOR_SLOPE and float(np.std(x)) > 0 and float(np.std(y)) > 0
    if spread and float(np.corrcoef(x, y)[0, 1]) > 0:
        slope = float(np.std(y) / np.std(x))
        return Drift(float(np.mean(y) - slope * np.mean(x)), slope, int(x.size))
    return Drift(float(np.mean(y - x)), 1.0, int(x.size))


def advance(
    previous: Estimates, measured: np.ndarray, delta: np.ndarray
) -> tuple[Estimates, Drift]:
    """The estimates after a checkpoint that measured the samples `measured` (indices), whose
    loss reductions are delta[measured] (delta has N entries; the others are not read)."""
    measured = np.asarray(measured, dtype=np.int64)
    drift = fit_drift(previous.delta[measured], delta[measured])
    estimate = drift.shift + drift.slope * previous.delta
    estimate[measured] = delta[measured]
    age = previous.age + 1
    age[measured] = 0
    return Estimates(estimate, age.astype(np.int32)), drift


def edge_distance(
    estimates: Estimates, update_index: int, update_times: int, window_size: float
) -> np.ndarray:
    """How far each sample's estimated loss reduction lies from the nearest edge of the window
    that this update would place over the current estimates (the reductions at its start,
    its end and where they turn negative), over the square root of the checkpoints since it
    was measured plus one: the smaller, the likelier that its rank crossed the edge since
    (an estimate's error grows as a random walk). inf for samples not ranked."""
    window, ranking = window_over(estimates.delta, update_index, update_times, window_size)
    ranked = estimates.delta[ranking]
    edges = [ranked[min(r, ranked.size - 1)] for r in (window.start, window.end) if ranked.size]
    if window.truncated_at is not None:
        edges.append(0.0)
    distance = np.full(estimates.delta.size, np.inf)
    if edges:
        gaps = np.abs(estimates.delta[ranking][None, :] - np.array(edges)[:, None]).min(axis=0)
        distance[ranking] = gaps / np.sqrt(estimates.age[ranking] + 1.0)
    return distance


def choose(
    estimates: Estimates,
    k: int,
    *,
    update_index: int,
    update_times: int,
    window_size: float,
) -> np.ndarray:
    """The k ranked samples (indices, ascending) the next checkpoint measures: those whose
    deadline cannot wait (earliest first), then those nearest an edge of this update's window;
    ties go to the older estimate, then the lower index."""
    candidates = np.flatnonzero(np.isfinite(estimates.delta))
    if k >= candidates.size:
        return candidates
    period = refresh_period(candidates.size, k)
    # checkpoints after this one by which each candidate may still wait
    slack = period - 1 - estimates.age[candidates].astype(np.int64)
    # the candidates with slack <= h must fit into this checkpoint and the h after it
    waiting = np.searchsorted(np.sort(slack), np.arange(period), side="right")
    must = int(np.clip((waiting - k * np.arange(period)).max(initial=0), 0, k))
    chosen = _due(estimates.delta[candidates], slack, must)
    if must < k:
        distance = edge_distance(estimates, update_index, update_times, window_size)
        rest = np.setdiff1d(np.arange(candidates.size), chosen, assume_unique=True)
        nearest = rest[np.lexsort((rest, distance[candidates[rest]]))]
        chosen = np.concatenate([chosen, nearest[: k - must]])
    return np.sort(candidates[chosen])


def _due(delta: np.ndarray, slack: np.ndarray, must: int) -> np.ndarray:
    """Positions of the `must` candidates with the least slack. Among those equally due, an
    even spread over their ranking: every rank region then has fresh samples at every
    checkpoint, and the drift is fitted over the whole range."""
    order = np.lexsort((np.arange(slack.size), slack))
    if must == 0:
        return order[:0]
    cut = slack[order[must - 1]]
    sure = order[slack[order] < cut]
    tied = np.flatnonzero(slack == cut)
    tied = tied[np.argsort(-delta[tied], kind="stable")]  # by rank
    picks = np.floor(np.arange(must - sure.size) * tied.size / (must - sure.size)).astype(int)
    return np.concatenate([sure, tied[picks]])
