"""What ranks a scored checkpoint's samples: their measured loss reductions against the run's
initial losses or, under a scoring budget, the estimates that common.budget carries from one
checkpoint to the next (which samples to measure, and how the others are ranked)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from common.budget import Estimates, advance, choose, samples_per_checkpoint
from common.selection import Window, delta_window, window_over
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import windows as window_store
from scorer_svc.storage.tables import FAILED, SCORED, CheckpointRow, Run

log = logging.getLogger(__name__)


def initial_losses(session: Session, run: Run) -> np.ndarray:
    """The run's initial losses; RuntimeError when its initial checkpoint has none."""
    assert run.initial_step is not None
    initial = checkpoint_store.get_checkpoint(session, run=run, step=run.initial_step)
    if initial is None or initial.status != SCORED:
        reason = initial.error if initial is not None and initial.status == FAILED else None
        raise RuntimeError(
            f"the initial checkpoint (step {run.initial_step}) has no losses"
            + (f": it failed with {reason}" if reason else "")
        )
    return loss_store.losses_at(session, run=run, step=run.initial_step)


def measured_window(
    session: Session, run: Run, checkpoint: CheckpointRow, losses: np.ndarray
) -> tuple[Window, np.ndarray, np.ndarray]:
    """The window of a checkpoint whose every sample was measured, the ranking it applies to
    and the loss reductions."""
    init = initial_losses(session, run)
    window, ranking = delta_window(
        init, losses, checkpoint.update_index, run.update_times, run.window_size
    )
    return window, ranking, init - losses


@dataclass(frozen=True)
class BudgetPlan:
    """A budgeted checkpoint: what the run knew before it, and the samples it measures."""

    run: Run
    checkpoint: CheckpointRow
    initial: np.ndarray  # the run's initial losses
    previous: Estimates
    measured: np.ndarray  # sample indices, ascending

    def estimates_after(self, losses: np.ndarray, *, log_as: str = "") -> Estimates:
        """The estimates once the measured samples' losses (in an N-array) are known."""
        estimates, drift = advance(self.previous, self.measured, self.initial - losses)
        log.debug(
            "%s: %d measured, drift %.4g + %.4g x (%d pairs)",
            log_as, self.measured.size, drift.shift, drift.slope, drift.pairs,
        )  # fmt: skip
        return estimates

    def window(self, estimates: Estimates) -> tuple[Window, np.ndarray]:
        run = self.run
        return window_over(
            estimates.delta, self.checkpoint.update_index, run.update_times, run.window_size
        )


def budget_plan(session: Session, run: Run, checkpoint: CheckpointRow) -> BudgetPlan | None:
    """Under a scoring budget, the plan of this checkpoint (common.budget.choose names the
    samples); None to measure every sample: no budget, no window here, the run's first
    checkpoint with a window, or a budget that covers every ranked sample."""
    if run.score_budget == 1.0 or not run.has_window(checkpoint.step):
        return None
    previous = checkpoint_store.last_windowed(session, run=run, before=checkpoint.step)
    if previous is None:
        return None
    init = initial_losses(session, run)
    estimates = window_store.get_estimates(session, run=run, step=previous.step)
    if estimates is None:  # measured in full
        current = loss_store.losses_at(session, run=run, step=previous.step)
        estimates = Estimates.measured_all(init - current)
    n = int(np.isfinite(estimates.delta).sum())
    k = samples_per_checkpoint(run.score_budget, n)
    if k >= n:
        return None
    chosen = choose(
        estimates,
        k,
        update_index=checkpoint.update_index,
        update_times=run.update_times,
        window_size=run.window_size,
    )
    return BudgetPlan(run, checkpoint, init, estimates, chosen)
