"""The Delta Loss selection rule: pure functions, no I/O.

For a run with N samples, window ratio s and U updates per epoch, every update but the run's
very first (which records the initial losses l_init) ranks samples by
delta_i = l_init_i - l_cur_i (descending, ties by index), places a window of s*N ranks whose
start slides along the ranking with a sigmoid of training progress within the epoch, and cuts
the window where deltas turn negative (samples that got worse are not prioritised). Samples
inside the window weigh 1.0, the others 0.025; weights are normalised to sum 1. Update 1 of
every later epoch has a window too, at the schedule's start (t = 0), over the same l_init.

A sample whose loss (initial or current) is missing or not finite takes no part: it has
weight 0 and is not ranked. N in the window formula is the run's N all the same, so the
window sits where the method puts it; ranks past the ranked samples are simply empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_SIZE = 0.2
IN_WINDOW_WEIGHT = 1.0
OUTSIDE_WEIGHT = 0.025
SIGMOID_STEEPNESS = 10.0


class SelectionError(ValueError):
    """The rule cannot be applied to these arguments (the message says why)."""


@dataclass(frozen=True)
class Window:
    """Where the window sits for one update; enough to rebuild the weights exactly."""

    update_index: int
    t: int
    T: int
    u: float
    start: int
    end: int
    truncated_at: int | None  # first rank whose delta < 0, if any
    n_ranked: int


def window_position(
    update_index: int, update_times: int, n: int, window_size: float
) -> tuple[int, int, float, int, int]:
    """Return (t, T, u, start, end) for update k of an epoch, before truncation.

    t = k - 1, T = U - 1, u = 1 / (1 + exp(-10 (t/T - 0.5))) (t/T taken as 0 when U = 1),
    start = int(u (N - sN)), end = int(u (N - sN) + sN): both from the unrounded start,
    int() truncating toward zero.
    """
    if not 0.0 <= window_size <= 1.0:
        raise SelectionError(f"window_size must be within [0, 1], got {window_size}")
    if update_times < 1:
        raise SelectionError(f"update_times is {update_times}: it must be at least 1")
    if not 1 <= update_index <= update_times:
        raise SelectionError(
            f"update index {update_index} is outside 1..{update_times} (update_times)"
        )
    t = update_index - 1
    big_t = update_times - 1
    progress = t / big_t if big_t else 0.0
    u = 1.0 / (1.0 + math.exp(-SIGMOID_STEEPNESS * (progress - 0.5)))
    span = window_size * n
    offset = u * (n - span)
    return t, big_t, u, int(offset), int(offset + span)


def _as_array(losses: Sequence[float | None] | np.ndarray) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in losses], dtype=np.float64)


def rank_by_delta(deltas: np.ndarray) -> np.ndarray:
    """Indices of the finite deltas, by delta descending; ties keep index order."""
    valid = np.flatnonzero(np.isfinite(deltas))
    order = np.argsort(-deltas[valid], kind="stable")
    return valid[order]


def delta_window(
    init_losses: Sequence[float | None] | np.ndarray,
    cur_losses: Sequence[float | None] | np.ndarray,
    update_index: int,
    update_times: int,
    window_size: float = DEFAULT_WINDOW_SIZE,
) -> tuple[Window, np.ndarray]:
    """Place the window for update k of an epoch; return it and the ranking it applies to."""
    init = _as_array(init_losses)
    cur = _as_array(cur_losses)
    if init.shape != cur.shape:
        raise SelectionError(
            f"initial losses have {init.size} samples but current losses have {cur.size}"
        )
    return window_over(init - cur, update_index, update_times, window_size)


def window_over(
    deltas: np.ndarray, update_index: int, update_times: int, window_size: float
) -> tuple[Window, np.ndarray]:
    """Place the window for update k over loss reductions (NaN: not ranked), measured or,
    under a scoring budget, estimated (common.budget); return it and the ranking."""
    ranking = rank_by_delta(deltas)
    t, big_t, u, start, end = window_position(update_index, update_times, deltas.size, window_size)
    negative = np.flatnonzero(deltas[ranking] < 0)
    truncated_at = int(negative[0]) if negative.size else None
    if truncated_at is not None:
        end = min(end, truncated_at)
    window = Window(update_index, t, big_t, u, start, end, truncated_at, int(ranking.size))
    return window, ranking


def weights_from_window(window: Window, ranking: np.ndarray, n_samples: int) -> np.ndarray:
    """Sampling weights (float64, sum 1) for all n_samples; unranked samples get 0."""
    weights = np.zeros(n_samples, dtype=np.float64)
    weights[ranking] = OUTSIDE_WEIGHT
    if window.end > window.start:
        weights[ranking[window.start : window.end]] = IN_WINDOW_WEIGHT
    total = weights.sum()
    if total <= 0:
        raise SelectionError("no sample has a finite loss: there is nothing to weight")
    return weights / total


def delta_means(
    deltas: np.ndarray, window: Window, ranking: np.ndarray
) -> tuple[float | None, float | None]:
    """The mean loss reduction of the ranked samples inside the window and outside it (None
    for a side with no sample): what the window picked against what it left."""
    inside = np.zeros(deltas.size, dtype=bool)
    inside[ranking[window.start : window.end]] = True
    ranked = np.zeros(deltas.size, dtype=bool)
    ranked[ranking] = True

    def mean(mask: np.ndarray) -> float | None:
        return float(deltas[mask].mean()) if mask.any() else None

    return mean(inside), mean(ranked & ~inside)


def uniform_weights(losses: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Weights of the run's first update (no window): equal for every sample with a finite
    loss."""
    finite = np.isfinite(_as_array(losses))
    if not finite.any():
        raise SelectionError("no sample has a finite loss: there is nothing to weight")
    return finite / finite.sum()


def delta_weights(
    init_losses: Sequence[float | None] | np.ndarray,
    cur_losses: Sequence[float | None] | np.ndarray,
    update_index: int,
    update_times: int,
    window_size: float = DEFAULT_WINDOW_SIZE,
) -> tuple[Window, np.ndarray]:
    """The whole rule for an update with a window: the window and the N normalised weights."""
    window, ranking = delta_window(init_losses, cur_losses, update_index, update_times, window_size)
    return window, weights_from_window(window, ranking, len(init_losses))
