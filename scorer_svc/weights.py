"""Weights of a scored checkpoint, rebuilt from its stored losses and window."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from common.selection import Window, rank_by_delta, uniform_weights, weights_from_window
from scorer_svc import crud
from scorer_svc.models import CheckpointRow, Run


@dataclass(frozen=True)
class ServedWeights:
    step: int
    update_index: int
    window: Window | None
    n_ranked: int
    values: np.ndarray  # float64, sums to 1


class WeightsCache:
    """Recently served weights; a scored checkpoint's weights never change."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[tuple[int, int], ServedWeights] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        # Each run's initial losses, read once rather than at every update (N float64 each).
        self._initial: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def get(self, session: Session, run: Run, checkpoint: CheckpointRow) -> ServedWeights:
        key = (run.id, checkpoint.step)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        weights = build_weights(session, run, checkpoint, initial=self._initial_losses)
        with self._lock:
            self._items[key] = weights
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return weights

    def _initial_losses(self, session: Session, run: Run, step: int) -> np.ndarray:
        key = (run.id, step)
        with self._lock:
            if key in self._initial:
                self._initial.move_to_end(key)
                return self._initial[key]
        losses = crud.losses_at(session, run=run, step=step)
        losses.setflags(write=False)
        with self._lock:
            self._initial[key] = losses
            while len(self._initial) > self._size:
                self._initial.popitem(last=False)
        return losses


def build_weights(
    session: Session,
    run: Run,
    checkpoint: CheckpointRow,
    *,
    initial: Callable[[Session, Run, int], np.ndarray] | None = None,
) -> ServedWeights:
    """initial(session, run, step) reads the initial losses (a cache may answer)."""
    current = crud.losses_at(session, run=run, step=checkpoint.step)
    if checkpoint.update_index == 1:
        values = uniform_weights(current)
        return ServedWeights(checkpoint.step, 1, None, int(np.isfinite(current).sum()), values)
    row = crud.get_window(session, run=run, step=checkpoint.step)
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
    if initial is None:
        init = crud.losses_at(session, run=run, step=run.initial_step)
    else:
        init = initial(session, run, run.initial_step)
    ranking = rank_by_delta(init - current)
    return ServedWeights(
        checkpoint.step,
        checkpoint.update_index,
        window,
        window.n_ranked,
        weights_from_window(window, ranking, run.n_samples),
    )
