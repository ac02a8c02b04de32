"""The ranking a scored checkpoint's weights come from: each sample's loss reduction, and its
order, for the routes that list or draw it."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from common.selection import rank_by_delta
from scorer_svc.scoring.weights import WeightsCache
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import windows as window_store
from scorer_svc.storage.tables import CheckpointRow, Run


class Rankings:
    """A scored checkpoint's losses, loss reductions and ranking; the initial losses from the
    cache the weights keep them in."""

    def __init__(self, weights: WeightsCache) -> None:
        self.weights = weights

    def losses(
        self, session: Session, run: Run, checkpoint: CheckpointRow
    ) -> tuple[np.ndarray, np.ndarray]:
        """(initial, current) losses of a scored checkpoint (the same for the run's first)."""
        current = loss_store.losses_at(session, run=run, step=checkpoint.step)
        if run.initial_step is None or run.initial_step == checkpoint.step:
            return current, current
        return self.weights.initial_losses(session, run, run.initial_step), current

    def deltas(
        self, session: Session, run: Run, checkpoint: CheckpointRow
    ) -> tuple[np.ndarray, np.ndarray]:
        """The loss reductions that ranked a scored checkpoint's samples, and their ages in
        scored checkpoints: measured (age 0) for every sample, or under a scoring budget the
        stored estimates."""
        if checkpoint.n_measured is not None:  # under a scoring budget
            estimates = window_store.get_estimates(session, run=run, step=checkpoint.step)
            if estimates is not None:
                return estimates.delta, estimates.age
        initial, current = self.losses(session, run, checkpoint)
        return initial - current, np.zeros(run.n_samples, dtype=np.int32)

    def ranking(
        self, session: Session, run: Run, checkpoint: CheckpointRow
    ) -> tuple[np.ndarray, np.ndarray]:
        """(deltas, ranking): the loss reductions by sample index, and the ranked samples'
        indices, the largest reduction first (samples without a finite one left out)."""
        delta, _ = self.deltas(session, run, checkpoint)
        return delta, rank_by_delta(delta)
