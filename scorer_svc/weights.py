"""Weights of a scored checkpoint, rebuilt from its stored losses and window."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from common.selection import Window, rank_by_delta, uniform_weights, weights_from_window
from scorer_svc import crud
from scorer_svc.models import Checkpoint, Run


@dataclass(frozen=True)
class Weights:
    step: int
    update_index: int
    window: Window | None
    n_ranked: int
    values: np.ndarray  # float64, sums to 1


class WeightsCache:
    """Recently served weights; a scored checkpoint's weights never change."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[tuple[int, int], Weights] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, session: Session, run: Run, checkpoint: Checkpoint) -> Weights:
        key = (run.id, checkpoint.step)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        weights = build_weights(session, run, checkpoint)
        with self._lock:
            self._items[key] = weights
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return weights


def build_weights(session: Session, run: Run, checkpoint: Checkpoint) -> Weights:
    current = crud.losses_at(session, run=run, step=checkpoint.step)
    if checkpoint.update_index == 1:
        values = uniform_weights(current)
        return Weights(checkpoint.step, 1, None, int(np.isfinite(current).sum()), values)
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
    initial = crud.losses_at(session, run=run, step=run.initial_step)
    ranking = rank_by_delta(initial - current)
    return Weights(
        checkpoint.step,
        checkpoint.update_index,
        window,
        window.n_ranked,
        weights_from_window(window, ranking, run.n_samples),
    )
