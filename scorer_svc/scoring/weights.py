"""Weights of a scored checkpoint, rebuilt from its stored losses and window."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np
from cachetools import LRUCache
from sqlalchemy.orm import Session

from common.budget import Estimates
from common.selection import (
    Window,
    delta_means,
    rank_by_delta,
    uniform_weights,
    weights_from_window,
)
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import windows as window_store
from scorer_svc.storage.tables import CheckpointRow, Run

T = TypeVar("T")


@dataclass(frozen=True)
class ServedWeights:
    step: int
    update_index: int
    window: Window | None
    n_ranked: int
    values: np.ndarray  # float64, sums to 1
    delta_in_window: float | None = None  # the mean loss reduction inside the window
    delta_outside: float | None = None  # and of the other ranked samples
    # under a scoring budget: the samples measured at this checkpoint, and the mean age in
    # scored checkpoints of the other ranked samples' estimates (None: all were measured)
    n_measured: int | None = None
    mean_age: float | None = None


# A run as the caches know it: its row number, which SQLite may give again to a run made after
# it was deleted, with when it was made.
RunKey = tuple[int, datetime]


def run_key(run: Run) -> RunKey:
    return (run.id, run.created_at)


class WeightsCache:
    """Recently served weights, and each run's initial losses (N float64, read once rather than
    at every update); a scored checkpoint's weights never change. Safe across threads: two
    requests for the same missing entry may both build it, and the results are equal."""

    def __init__(self, size: int = 8) -> None:
        self._weights: LRUCache[tuple[RunKey, int], ServedWeights] = LRUCache(maxsize=size)
        self._initial: LRUCache[tuple[RunKey, int], np.ndarray] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def get(self, session: Session, run: Run, checkpoint: CheckpointRow) -> ServedWeights:
        return self._cached(
            self._weights,
            (run_key(run), checkpoint.step),
            lambda: build_weights(session, run, checkpoint, initial=self.initial_losses),
        )

    def put(self, run: Run, weights: ServedWeights) -> None:
        """Weights made elsewhere from the same losses (the worker, as it stores them)."""
        weights.values.setflags(write=False)
        with self._lock:
            self._weights[(run_key(run), weights.step)] = weights

    def forget(self, run: Run) -> None:
        """Drop a deleted run's entries, to free their memory (a later run under the same row
        number has another key)."""
        with self._lock:
            for cache in (self._weights, self._initial):
                for key in [k for k in cache if k[0] == run_key(run)]:
                    del cache[key]

    def initial_losses(self, session: Session, run: Run, step: int) -> np.ndarray:
        """The run's initial losses (those of its checkpoint at `step`), read once."""
        return self._cached(
            self._initial,
            (run_key(run), step),
            lambda: _read_only(loss_store.losses_at(session, run=run, step=step)),
        )

    def _cached(
        self,
        cache: LRUCache[tuple[RunKey, int], T],
        key: tuple[RunKey, int],
        build: Callable[[], T],
    ) -> T:
        with self._lock:
            found = cache.get(key)
        if found is not None:
            return found
        value = build()  # outside the lock: reading N losses must not hold up other requests
        with self._lock:
            cache[key] = value
        return value


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def build_weights(
    session: Session,
    run: Run,
    checkpoint: CheckpointRow,
    *,
    initial: Callable[[Session, Run, int], np.ndarray] | None = None,
) -> ServedWeights:
    """initial(session, run, step) reads the initial losses (a cache may answer)."""
    current = loss_store.losses_at(session, run=run, step=checkpoint.step)
    if not run.has_window(checkpoint.step):
        return served_weights(checkpoint, run.n_samples, current)
    row = window_store.get_window(session, run=run, step=checkpoint.step)
    if row is None and checkpoint.update_index == 1:
        # scored before update 1 of a later epoch had a window: it was served uniform then
        return served_weights(checkpoint, run.n_samples, current)
    if row is None or run.initial_step is None:
        raise LookupError(f"step {checkpoint.step} of run {run.run_id} has no stored window")
    window = Window(
        update_index=row.update_index,
        t=row.t,
        T=row.T,
        u=row.u,
        start=row.start,
        end=row.end,
        truncated_at=row.truncated_at,
        n_ranked=row.n_ranked,
    )
    estimates = None
    if checkpoint.n_measured is not None:  # under a scoring budget: ranked on its estimates
        estimates = window_store.get_estimates(session, run=run, step=checkpoint.step)
    if estimates is not None:
        deltas = estimates.delta
    elif initial is None:
        deltas = loss_store.losses_at(session, run=run, step=run.initial_step) - current
    else:
        deltas = initial(session, run, run.initial_step) - current
    ranking = rank_by_delta(deltas)
    return served_weights(checkpoint, run.n_samples, current, window, ranking, deltas, estimates)


def served_weights(
    checkpoint: CheckpointRow,
    n_samples: int,
    current: np.ndarray,
    window: Window | None = None,
    ranking: np.ndarray | None = None,
    deltas: np.ndarray | None = None,
    estimates: Estimates | None = None,
) -> ServedWeights:
    """A checkpoint's weights from its losses: uniform over the finite ones without a window,
    else the window over the ranking of loss reductions (the worker's, or one rebuilt;
    estimated ones under a scoring budget)."""
    if window is None or ranking is None:
        count = int(np.isfinite(current).sum())
        return ServedWeights(
            checkpoint.step, checkpoint.update_index, None, count, uniform_weights(current)
        )
    values = weights_from_window(window, ranking, n_samples)
    inside, outside = delta_means(deltas, window, ranking) if deltas is not None else (None, None)
    return ServedWeights(
        checkpoint.step,
        checkpoint.update_index,
        window,
        window.n_ranked,
        values,
        inside,
        outside,
        estimates.n_measured() if estimates is not None else None,
        estimates.mean_age() if estimates is not None else None,
    )
