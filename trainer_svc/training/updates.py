"""One update of the schedule: send the checkpoint, obtain weights, draw, record.

The checkpoint is copied into a host buffer and sent by a background thread
(trainer_svc.scorer.sender). sync: wait for the weights of the checkpoint just sent (the published
method). async: training goes on while it is sent, drawing from the newest weights already
available (uniform until any exist); the next update waits for the send only if it is still
in flight, and records that wait (`send_wait_seconds`). A background send that fails is
noticed at the end of the step it failed in (`check_sent`) and follows on_scorer_failure as a
send in the update does.
When the scorer cannot be reached in time, refuses or fails, `on_scorer_failure` decides
(trainer_svc.scorer.client.scorer_failed): stop with a message that says what to check, or
carry on with uniform weights, logged loudly and recorded with the failure and its code.
Once the scorer is known down, an update first probes it (trainer_svc.scorer.outage); an unknown run
that had registered means the scorer lost its database (trainer_svc.scorer.client.run_lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch

from common.wire.errors import ProtocolError, UnknownRun
from trainer_svc.scorer.client import (
    OnFailure,
    ScorerClient,
    ScorerFailure,
    run_lost,
    scorer_failed,
)
from trainer_svc.scorer.outage import Outage
from trainer_svc.scorer.retry import StopRequested, never
from trainer_svc.scorer.sender import BackgroundSender, Handoff
from trainer_svc.scorer.weights import ScorerWeights
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.records import JsonlRecord
from trainer_svc.training.sampler import SelectionPlan
from trainer_svc.training.schedule import Segment, draw_permutation, draw_weighted, update_seed
from trainer_svc.training.snapshot import CheckpointUpload

logger = logging.getLogger(__name__)

__all__ = ["ScorerFailure", "SharedUpdates", "UpdateCoordinator", "Updates"]


class Updates(Protocol):
    def run_update(
        self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]
    ) -> dict | None: ...

    def check_sent(self) -> None:
        """on_scorer_failure for a background send that failed (ScorerFailure under fail)."""

    def finish(self, stop_requested: Callable[[], bool] = never) -> None:
        """Wait for the send in flight (StopRequested on a stop request), then check_sent."""

    def unsent(self) -> CheckpointUpload | None:
        """A checkpoint sent but not acknowledged (in flight, or failed)."""

    def resend(self, upload: CheckpointUpload) -> None:
        """Send again what a stopped run left unsent."""


class UpdateCoordinator:
    def __init__(
        self,
        *,
        run_id: str,
        kind: str,
        plan: SelectionPlan,
        scorer: ScorerClient,
        record: JsonlRecord,
        mode: Literal["sync", "async"] = "sync",
        on_failure: OnFailure = "fail",
        on_update: Callable[[dict[str, Any]], None] | None = None,
        registered: bool = True,
        outage: Outage | None = None,
        stop_requested: Callable[[], bool] = never,
    ):
        """registered: the scorer registered the run at its start (an unknown run is then a
        lost database); outage: the scorer's known-down state (a fresh one by default)."""
        self.run_id = run_id
        self.kind = kind
        self.plan = plan
        self.scorer = scorer
        self.record = record
        self.mode = mode
        self.on_failure = on_failure
        self.on_update = on_update  # e.g. the demo's printout
        self.registered = registered
        self.outage = outage or Outage(scorer.ping)
        self.stop_requested = stop_requested  # ends a wait for the upload in flight
        self.sender = BackgroundSender(scorer.send_checkpoint, cancel=scorer.cancel_send)
        self._handoff = Handoff(0.0, 0.0)
        self._unsent_failure: dict[str, Any] | None = None  # for the next row
        self.finish_wait_seconds = 0.0  # training's end waited for the last send

    def run_update(self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]) -> dict:
        """Everything for the update starting at segment.start; returns its record row."""
        started = time.monotonic()
        send_wait = self.sender.wait(self.stop_requested)  # StopRequested: left to a resume
        self.check_sent()
        self._handoff = Handoff(send_wait, 0.0)
        got, failure = self._obtain(segment, tensors)
        waited = time.monotonic() - started
        indices, draw, seed, source = self._draw(segment, got)
        if failure is not None:
            source = "uniform_fallback"
        self.plan.set_segment(segment, indices)
        row = {
            "epoch": segment.epoch,
            "update_index": segment.update_index,
            "global_step": segment.start,
            "mode": self.mode,
            "weights_step": got.step if got else None,
            "weights_update_index": got.update_index if got else None,
            "window": got.window if got else None,
            "delta_mean_in_window": got.delta_in_window if got else None,
            "delta_mean_outside": got.delta_outside if got else None,
            # under a scoring budget: samples measured at the weights' checkpoint, and the mean
            # age in scored checkpoints of the others' estimates
            "n_measured": got.n_measured if got else None,
            "mean_age": got.mean_age if got else None,
            # how many updates old the weights are (async mode draws from older ones)
            "staleness": self._staleness(segment, got),
            "source": source,
            "draw": draw,
            "seed": seed,
            "seconds_waited": round(waited, 3),  # all the update held training up
            "send_wait_seconds": round(self._handoff.waited, 3),  # for the last send to end
            "snapshot_seconds": round(self._handoff.copied, 3),
            "failure": str(failure) if failure else None,
            "failure_code": failure.code if failure else None,
            "unsent": self._unsent_failure,  # an earlier checkpoint whose sending failed
            "sampled_indices": indices.tolist(),
        }
        self._unsent_failure = None
        self.record.append(row)
        logger.info("%s", describe_update(row))
        if self.on_update is not None:
            self.on_update(row)
        return row

    def _staleness(self, segment: Segment, got: ScorerWeights | None) -> int | None:
        """How many updates came between the weights' checkpoint and this update."""
        if got is None:
            return None
        schedule = self.plan.schedule

        def number(step: int) -> int:  # updates are counted through the epochs
            at = schedule.segment_at(step)
            return at.epoch * schedule.update_times + at.update_index

        return max(0, number(segment.start) - number(got.step))

    def _obtain(
        self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]
    ) -> tuple[ScorerWeights | None, ProtocolError | None]:
        """The weights to draw from, or (on_scorer_failure: uniform) None and the failure."""
        what = f"update {segment.update_index} at step {segment.start}"
        try:
            self.outage.check()  # a scorer known down: a short probe first
            return self._ask_scorer(segment, tensors), None
        except ProtocolError as exc:  # unreachable, refused, or failed scoring
            failure = self._meaning(exc)
            scorer_failed(
                self.on_failure,
                what,
                failure,
                fallback="this update draws from UNIFORM weights: it is not Delta Loss selection",
            )
            self.outage.note(failure, what)  # uniform: the next update may probe first
            return None, failure

    def _meaning(self, error: ProtocolError) -> ProtocolError:
        """An unknown run that had registered is a lost database; other errors say themselves."""
        if isinstance(error, UnknownRun) and self.registered:
            return run_lost(self.run_id, error)
        return error

    def _ask_scorer(
        self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]
    ) -> ScorerWeights | None:
        upload = CheckpointUpload(
            self.run_id, segment.start, segment.update_index, self.kind, tensors()
        )
        if self.mode == "sync":
            self._hand_over(upload)
            self.sender.wait(self.stop_requested)  # StopRequested: left to the resumed run
            self.sender.result()
            return self.scorer.wait_for(segment.start)
        newest = self.scorer.latest()  # what is scored already; this checkpoint cannot be
        self._hand_over(upload)
        return newest

    def _hand_over(self, upload: CheckpointUpload) -> None:
        handoff = self.sender.send(upload)
        self._handoff = Handoff(self._handoff.waited + handoff.waited, handoff.copied)

    def check_sent(self) -> None:
        """on_scorer_failure for a checkpoint whose background sending failed: fail raises
        ScorerFailure; uniform logs it, and the next update's row records it."""
        taken = self.sender.take_failure()
        if taken is None:
            return
        upload, error = taken
        if isinstance(error, StopRequested):  # cancelled by a stop: saved as unsent
            return
        if not isinstance(error, ProtocolError):  # a failure inside the trainer: stop
            raise ScorerFailure(
                f"sending the {upload.describe()} failed: {type(error).__name__}: {error}"
            ) from error
        failure = self._meaning(error)
        what = f"sending the {upload.describe()}"
        self._unsent_failure = {
            "step": upload.step,
            "update_index": upload.update_index,
            "failure": str(failure),
            "failure_code": failure.code,
        }
        scorer_failed(
            self.on_failure,
            what,
            failure,
            fallback="the scorer does not score it; selection goes on from its other checkpoints",
        )
        self.outage.note(failure, what)

    def finish(self, stop_requested: Callable[[], bool] = never) -> None:
        waited = self.finish_wait_seconds = self.sender.wait(stop_requested)
        if waited > 0:
            logger.info("waited %.1fs for the last checkpoint to reach the scorer", waited)
        self.check_sent()

    def unsent(self) -> CheckpointUpload | None:
        return self.sender.unsent

    def resend(self, upload: CheckpointUpload) -> None:
        logger.info(
            "sending the %s again: the run stopped before the scorer acknowledged it",
            upload.describe(),
        )
        self.sender.resend(upload)

    def close(self) -> None:
        self.sender.close()

    def _draw(
        self, segment: Segment, got: ScorerWeights | None
    ) -> tuple[torch.Tensor, str, int, str]:
        n = self.plan.n_samples
        count = self.plan.schedule.batch * segment.steps
        first = segment.epoch == 0 and segment.update_index == 1
        seed = update_seed(segment.start, first)
        if got is not None and got.weights.numel() != n:
            raise ScorerFailure(
                f"the scorer returned {got.weights.numel()} weights for a run of {n} samples"
            )
        source = "scorer" if got is not None else "uniform"
        if first:  # its losses become the initial ones: no ranking to draw from yet
            return draw_permutation(n, count, seed), "randperm", seed, source
        weights = got.weights if got is not None else torch.full((n,), 1.0 / n, dtype=torch.float64)
        return draw_weighted(weights, count, seed), "multinomial", seed, source


class SharedUpdates:
    """Each update made once, on rank 0, and its draw given to every rank (torchrun): rank 0
    runs the coordinator; a failure that stops the run stops every rank at the same step."""

    def __init__(self, ranks: Ranks, plan: SelectionPlan, coordinator: UpdateCoordinator | None):
        if ranks.is_main != (coordinator is not None):
            raise ValueError("rank 0, and only rank 0, runs the coordinator")
        self.ranks = ranks
        self.plan = plan
        self.coordinator = coordinator

    def run_update(
        self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]
    ) -> dict | None:
        """Rank 0's record row, None elsewhere; ScorerFailure on every rank if rank 0's
        update stopped the run."""
        if self.coordinator is not None:
            try:
                row = self.coordinator.run_update(segment, tensors)
            except StopRequested:  # the update is left to the resumed run, on every rank
                self.ranks.share({"stopped": True})
                raise
            except Exception as failure:  # whatever stops rank 0 stops every rank, at once
                self.ranks.share({"failure": f"rank 0: {type(failure).__name__}: {failure}"})
                raise
            self.ranks.share({"indices": row["sampled_indices"]})
            return row
        told = self.ranks.share(None)
        if "stopped" in told:
            raise StopRequested("rank 0 stopped before this update")
        if "failure" in told:
            raise ScorerFailure(told["failure"])
        self.plan.set_segment(segment, torch.tensor(told["indices"], dtype=torch.long))
        return None

    def check_sent(self) -> None:  # rank 0's; a stop it causes reaches the others (GracefulStop)
        if self.coordinator is not None:
            self.coordinator.check_sent()

    def finish(self, stop_requested: Callable[[], bool] = never) -> None:
        if self.coordinator is not None:
            self.coordinator.finish(stop_requested)

    def unsent(self) -> CheckpointUpload | None:
        return self.coordinator.unsent() if self.coordinator is not None else None

    def resend(self, upload: CheckpointUpload) -> None:
        if self.coordinator is not None:
            self.coordinator.resend(upload)


def describe_update(row: dict[str, Any]) -> str:
    """The one log line of an update: where the window sat, what it picked, the wait."""
    text = f"update {row['update_index']} of epoch {row['epoch']} at step {row['global_step']}: "
    window = row["window"]
    if window is not None:
        if window["end"] > window["start"]:
            text += f"window [{window['start']}, {window['end']})"
            if window.get("truncated_at") is not None:
                text += f" cut at rank {window['truncated_at']}"
        else:  # cut before its start: every sample weighs alike
            text += f"window empty at rank {window['start']}"
            if window.get("truncated_at") is not None:
                text += f" (deltas negative from rank {window['truncated_at']})"
        inside, outside = row["delta_mean_in_window"], row["delta_mean_outside"]
        if inside is not None or outside is not None:
            text += f", mean delta {_number(inside)} in it, {_number(outside)} outside"
        text += "; "
    text += f"{row['draw']} draw from {row['source']}"
    if row["weights_step"] is not None:
        text += f" (weights of step {row['weights_step']}"
        text += f", {row['staleness']} update(s) old" if row["staleness"] else ""
        if row.get("n_measured") is not None:
            text += f", {row['n_measured']} measured"
        text += ")"
    return text + f", waited {row['seconds_waited']:.1f}s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def selection_metrics(row: dict[str, Any]) -> dict[str, float]:
    """An update's figures for the Trainer's log (and report_to's charts): where the window
    sat, the mean loss reduction in and out of it, the wait and the weights' age."""
    window = row["window"] or {}
    values = {
        "selection/window_start": window.get("start"),
        "selection/window_end": window.get("end"),
        "selection/truncated_at": window.get("truncated_at"),
        "selection/delta_in_window": row["delta_mean_in_window"],
        "selection/delta_outside": row["delta_mean_outside"],
        "selection/seconds_waited": row["seconds_waited"],
        "selection/staleness": row["staleness"],
        "selection/n_measured": row.get("n_measured"),
        "selection/mean_age": row.get("mean_age"),
    }
    return {key: float(value) for key, value in values.items() if value is not None}


def log_selection(trainer: Any, row: dict[str, Any]) -> None:
    """The update's figures into the Trainer's log; a report_to backend that fails there
    (a tracking server down) is logged, and training goes on. Trainer.log clears
    control.should_log, which decides whether this step's loss is logged, by a collective under
    torchrun: it is kept as it was, so every rank logs the same steps."""
    should_log = trainer.control.should_log
    try:
        trainer.log(selection_metrics(row))
    except Exception:
        logger.warning(
            "the figures of the update at step %d did not reach the Trainer's log",
            row["global_step"],
            exc_info=True,
        )
    finally:
        trainer.control.should_log = should_log
