"""Callbacks for transformers' Trainer: one that runs each update when its step is reached,
and one that stops training at a step end with a checkpoint. Trainer's loop is used as is; the
scheduled dataloader and the record of trained samples are installed by
trainer_svc.training.selection.DeltaLossSelection.attach.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer_svc.scorer.retry import ScorerFailure, StopRequested
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.records import TrainedSamples
from trainer_svc.training.schedule import Schedule
from trainer_svc.training.snapshot import save_unsent
from trainer_svc.training.updates import Updates

logger = logging.getLogger(__name__)


class SelectionCallback(TrainerCallback):
    """Runs update k when global_step reaches warmup_step + (k-1) x update_step.

    An update that stops the run (ScorerFailure) after some steps were trained is handed to
    the stop, which saves a checkpoint at that step before training ends; one before any step
    (warmup_step 0) stops at once: there is nothing to save.
    """

    def __init__(
        self,
        schedule: Schedule,
        coordinator: Updates,
        tensors: Callable[[], dict[str, torch.Tensor]],
        trained: TrainedSamples,
        stop: GracefulStop | None = None,
    ):
        self.schedule = schedule
        self.coordinator = coordinator
        self.tensors = tensors
        self.trained = trained
        self.stop = stop
        self.unsent_at_end: ScorerFailure | None = None

    def _maybe_update(self, step: int) -> None:
        segment = self.schedule.update_at(step)
        if segment is None:
            return
        if self.stop is not None and self.stop.agreed():
            # Stopping at this step: the checkpoint saved now resumes here, and the resumed
            # run sends this update (the scorer answers a repeat with `duplicate`).
            logger.info(
                "stop requested: update %d at step %d left to the resumed run",
                segment.update_index,
                step,
            )
            return
        self.coordinator.run_update(segment, self.tensors)

    def on_train_begin(self, args, state, control, **kwargs):
        self._maybe_update(state.global_step)  # warmup_step 0: update 1 before any step

    def on_step_end(self, args, state, control, **kwargs):
        self.trained.flush()
        try:
            self.coordinator.check_sent()  # a background send that failed during this step
        except ScorerFailure as failure:
            if state.global_step >= state.max_steps:  # nothing left to stop: save the model,
                self.unsent_at_end = failure  # then report it
            else:
                self._fail(failure)
        try:  # every rank goes on to the same collectives, a failure of rank 0's or not
            self._maybe_update(state.global_step)
        except StopRequested:  # a stop while the update waited for the last send to end
            logger.info(
                "stop requested: update at step %d left to the resumed run", state.global_step
            )
        except ScorerFailure as failure:
            self._fail(failure)

    def _fail(self, failure: ScorerFailure) -> None:
        if self.stop is None:
            raise failure
        self.stop.fail(failure)  # saved and stopped by the stop's on_step_end, next

    def on_save(self, args, state, control, **kwargs):
        """A stop's checkpoint keeps a checkpoint sent but not acknowledged, for the resumed
        run to send again (the update at the stop's own step is made again by it anyway)."""
        unsent = self.coordinator.unsent()
        stopping = self.stop is not None and self.stop.requested
        resumable = state.global_step < state.max_steps  # at the last step: finish() waits
        if unsent is not None and stopping and resumable and unsent.step != state.global_step:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            path = save_unsent(unsent, folder)
            logger.warning(
                "the %s was not acknowledged by the scorer: kept in %s, the resumed run sends "
                "it again",
                unsent.describe(),
                path,
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.trained.flush()
        stopping = self.stop is not None and self.stop.requested
        if stopping and state.global_step < state.max_steps:
            return  # a send in flight is cancelled, and kept in the stop's checkpoint
        # A stop asked for during the last step leaves the last send its own timeout; one
        # asked for while waiting ends the wait (a second SIGTERM exits at once, as ever).
        already = stopping
        stop = self.stop

        def stop_requested() -> bool:
            return stop is not None and stop.requested and not already

        try:  # the last checkpoint reaches the scorer
            self.coordinator.finish(stop_requested)
        except StopRequested as stopped:  # training is done: nothing to resume
            unsent = self.coordinator.unsent()
            logger.warning(
                "%s; the %s is not in the scorer's history (the trained model is saved)",
                stopped,
                unsent.describe() if unsent is not None else "last checkpoint",
            )
        except ScorerFailure as failure:
            self.unsent_at_end = failure  # raised once the model is saved


class GracefulStop(TrainerCallback):
    """Stops training at the end of the current step with a checkpoint (resume_from_checkpoint
    continues from it, sending that step's update again): on SIGTERM, or when an update's
    scorer failure stops the run. A second SIGTERM stops at once, without saving.

    Put it after SelectionCallback: a signal that arrives while an update waits for the scorer
    then stops at that step, once the update is drawn; a failed update stops at its step.
    """

    def __init__(self, ranks: Ranks | None = None) -> None:
        self.signal: int | None = None  # the signal that asked for the stop
        self.failure: ScorerFailure | None = None  # the update failure that stopped the run
        self.ranks = ranks or Ranks()

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.failure is not None

    def request(self, signum: int, frame: Any = None) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            logger.error("second %s: stopping now, without saving", name)
            raise SystemExit(128 + signum)
        self.signal = signum
        logger.warning(
            "%s: stopping after the current step with a checkpoint (send it again to stop at "
            "once, without saving)",
            name,
        )

    def agreed(self) -> bool:
        """Whether any rank asked for the stop; every rank gets the same answer (torchrun
        signals every rank, not all within the same step). A rank that did not ask takes rank
        0's failure, or else the signal, as its own; one that did keeps its own reason."""
        if self.ranks.world == 1 or not self.ranks.any(self.requested):
            return self.requested
        failure = self.ranks.share(str(self.failure) if self.failure is not None else None)
        if not self.requested:
            if failure is not None:
                self.failure = ScorerFailure(f"rank 0: {failure}")
            else:
                self.signal = signal.SIGTERM
            logger.warning("another rank is stopping: stopping after this step with it")
        return True

    def fail(self, failure: ScorerFailure) -> None:
        """An update failed and on_scorer_failure is `fail`: save at this step, then stop."""
        self.failure = failure
        logger.error("an update failed: saving a checkpoint at this step, then stopping")

    @contextmanager
    def handling(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
        """Handle the signals while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.request) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.agreed():
            control.should_save = True
            control.should_training_stop = True
