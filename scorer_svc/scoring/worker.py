"""The scoring worker: takes acknowledged checkpoints in order and stores their samples'
losses (every sample's, or under a scoring budget those common.budget chooses)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from common.budget import Estimates
from common.selection import Window
from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.budget_plan import budget_plan, measured_window
from scorer_svc.scoring.model import ScoringAborted
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.ranks import RankGroup, RankLost
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.scheduling import next_turn
from scorer_svc.scoring.single_rank import SingleRank
from scorer_svc.scoring.weights import WeightsCache, served_weights
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage.checkpoint_files import StoredCheckpoint
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.outages import (
    DatabaseOutageTooLong,
    first_line,
    is_transient,
    status_of,
    through_outages,
)
from scorer_svc.storage.superseding import discard_superseded
from scorer_svc.storage.tables import PENDING, SCORED, SCORING, CheckpointRow, Run

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_WAIT_S = 0.5


class StoppedInOutage(Exception):
    """The worker was stopped while the database did not answer: what it was doing is left as
    a restart finds it (a checkpoint left `scoring` is put back in the queue at the start)."""


@dataclass(eq=False)
class Worker:
    """Scores acknowledged checkpoints in order, in its own thread. failures: where a failure
    the database cannot take is kept (the API reads it). Its reads and writes are tried again
    through a database outage (outages.through_outages) for up to database_outage_seconds: a
    PostgreSQL restart pauses the scoring, and fails a checkpoint only when it lasts longer,
    and not then when it cut off the claim or the store of the checkpoint (either may have
    been taken, its answer lost): the checkpoint is looked at again once the database answers.
    A stop during an outage leaves the checkpoint to be scored after the restart."""

    sessions: sessionmaker[Session]
    registry: Registry
    _: KW_ONLY
    failures: UnrecordedFailures
    keep_checkpoints: bool
    instance: str  # this scorer's name: it scores only the runs it registered
    # who scores: this process alone (SingleRank), or with the other ranks, under torchrun
    group: RankGroup | SingleRank
    # the API's cache: a checkpoint's weights are put there as it is stored, so that its
    # trainer's first request does not read the losses back
    weights: WeightsCache
    metrics: ScorerMetrics  # what /metrics reports of the scoring
    progress: ScoringProgress  # how far the checkpoint being scored is (API)

    def __post_init__(self) -> None:
        # checkpoints left `scoring` (by a previous process, or by a claim or store of this
        # one an outage left unanswered) made to wait again: False until done
        self._released = False
        # checkpoints whose losses were being stored when the database stopped answering for
        # longer than database_outage_seconds: id -> their tensors' path (_settle)
        self._unsettled: dict[int, str] = {}
        self._database_failing = False  # the last round met a database error (_loop)
        self._turns = 0
        self._last_served: dict[int, int] = {}  # run pk -> the turn it was last served
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scorer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def is_alive(self) -> bool:
        """Whether the scoring thread runs (started, not stopped, not died)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 60) -> None:
        """Stop between batches; a checkpoint cut off stays pending and is scored on restart."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            failing = False
            try:
                worked = self.run_once()
            except StoppedInOutage as exc:  # no traceback: a restart takes it up again
                log.warning("%s; left for the restart", exc)
                worked = False
            except DatabaseOutageTooLong as exc:  # nothing was being scored: try again later
                log.error("%s; looking again", exc)
                worked = False
            except SQLAlchemyError as error:  # one line at once, then one a minute
                status_of(self.sessions).failed(
                    error, "looking for a checkpoint to score", traceback=True
                )
                worked, failing = False, True
            except Exception:
                log.exception("scoring loop error")
                worked = False
            if self._database_failing and not failing:
                status_of(self.sessions).answered()
            self._database_failing = failing
            if not worked:
                self._heartbeat(self.group)
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()

    @staticmethod
    def _heartbeat(group: RankGroup | SingleRank) -> None:
        try:
            group.heartbeat()
        except RankLost as exc:
            log.error("%s", exc)

    def run_once(self) -> bool:
        """Score one of this instance's pending checkpoints, runs taking turns
        (scheduling.next_turn); False when there was none (or when a scoring rank is lost:
        nothing is scored until the scorer is restarted)."""
        if self.group.lost is not None:
            return False
        self._record_failures()
        self._settle()
        with self.sessions() as session:
            checkpoint_id = self._database(
                session, lambda: self._next(session), "looking for a checkpoint to score"
            )
            if checkpoint_id is None:
                return False
            try:
                checkpoint = self._claim(session, checkpoint_id)
            except DatabaseOutageTooLong:  # nothing done to it, but the claim may be taken:
                self._rollback(session)  # it is looked at again on the next round, and put
                self._released = False  # back in the queue if it was left `scoring`
                raise
            except SQLAlchemyError as error:  # no write taken: fail it in memory
                self._rollback(session)
                log.error("cannot claim checkpoint %d (%s)", checkpoint_id, type(error).__name__)
                self.failures.record(checkpoint_id, f"{type(error).__name__}: {error}")
                self.metrics.failed()
                return True
            if checkpoint is None:  # deleted since it was listed
                return True
            self._turns += 1
            self._last_served[checkpoint.run_pk] = self._turns
            checkpoint_id = checkpoint.id
            try:
                self._score(session, checkpoint)
            finally:
                self.progress.finish(checkpoint_id)
            return True

    def _next(self, session: Session) -> int | None:
        """The checkpoint whose turn it is (released cut-off ones first, at the first round)."""
        if not self._released:
            released = checkpoint_store.release_cut_off(session, instance=self.instance)
            if released:
                log.info("%d checkpoint(s) cut off while scoring are scored again", released)
            for run in checkpoint_store.async_runs(session, instance=self.instance):
                discard_superseded(session, run, keep=self.keep_checkpoints)
            self._released = True
        queued = checkpoint_store.pending(
            session, instance=self.instance, skip=self.failures.pending().keys()
        )
        return next_turn(queued, self._last_served)

    def _claim(self, session: Session, checkpoint_id: int) -> CheckpointRow | None:
        tries = 0

        def claim() -> CheckpointRow | None:
            nonlocal tries
            tries += 1
            claimed = checkpoint_store.claim(
                session, checkpoint_id=checkpoint_id, instance=self.instance
            )
            if claimed is None and tries > 1:  # the claim lost with its connection may hold
                row = session.get(CheckpointRow, checkpoint_id, populate_existing=True)
                if row is not None and row.status == SCORING:  # this instance's one process
                    return row
            return claimed

        return self._database(session, claim, f"claiming checkpoint {checkpoint_id}")

    def _database(self, session: Session, work: Callable[[], T], what: str) -> T:
        """work() on the session, tried again (after a rollback) through a database outage
        for up to database_outage_seconds (outages.through_outages)."""

        try:
            return through_outages(
                work,
                seconds=self.registry.settings.database_outage_seconds,
                status=status_of(self.sessions),
                what=what,
                before_retry=lambda: self._rollback(session),
                retry_while=lambda: not self._stop.is_set(),  # a stop does not wait it out
            )
        except SQLAlchemyError as error:
            if self._stop.is_set() and is_transient(error):
                raise StoppedInOutage(
                    f"stopped while {what}, the database not answering: "
                    f"{type(error).__name__}: {first_line(error)}"
                ) from error
            raise

    @staticmethod
    def _rollback(session: Session) -> None:
        """The session's transaction ended, whether the database answers or not (the next use
        finds it or not)."""
        with contextlib.suppress(SQLAlchemyError):
            session.rollback()

    def _store(self, session: Session, checkpoint_id: int, store: Callable[[], None]) -> None:
        """store() (scorer_svc.storage.checkpoints.store_scores), tried again through an
        outage; a commit whose answer was lost with the connection is found stored, not taken
        for a deleted checkpoint."""
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            try:
                store()
            except checkpoint_store.CheckpointGone:
                if tries > 1:
                    row = session.get(CheckpointRow, checkpoint_id, populate_existing=True)
                    if row is not None and row.status == SCORED:
                        return
                raise

        self._database(session, attempt, f"storing the losses of checkpoint {checkpoint_id}")

    def _fail(self, session: Session, checkpoint_id: int, error: str, path: str) -> None:
        """Record the failure; its tensors go once it is recorded (a step sent again brings
        them anew), and stay while the failure is only in memory: a restart scores it again."""
        self.metrics.failed()
        try:
            if not checkpoint_store.mark_failed(session, checkpoint_id=checkpoint_id, error=error):
                log.warning(
                    "checkpoint %d no longer waits for its scores (stored, or deleted): its "
                    "failure is not recorded (%s)", checkpoint_id, error,
                )  # fmt: skip
            self._discard(path)
        except SQLAlchemyError as db_error:
            session.rollback()
            log.error(
                "cannot record that checkpoint %d failed (%s); serving the failure from memory",
                checkpoint_id,
                type(db_error).__name__,
            )
            self.failures.record(checkpoint_id, error)

    def _record_failures(self) -> None:
        for checkpoint_id, error in self.failures.pending().items():
            try:
                with self.sessions() as session:
                    checkpoint_store.mark_failed(session, checkpoint_id=checkpoint_id, error=error)
                    row = session.get(CheckpointRow, checkpoint_id)
            except SQLAlchemyError:
                return  # still unavailable; try again on the next round
            self.failures.forget(checkpoint_id)
            if row is not None:
                self._discard(row.path)

    def _settle(self) -> None:
        """The checkpoints whose store was cut off by an outage longer than
        database_outage_seconds, looked at once the database answers: the commit may have
        been taken, its answer lost with the connection. One stored (or gone) has its tensors
        go; one still waiting is put back in the queue (as at a restart) and scored again."""
        for checkpoint_id, path in list(self._unsettled.items()):
            try:
                with self.sessions() as session:
                    row = session.get(CheckpointRow, checkpoint_id)
                    status = None if row is None else row.status
            except SQLAlchemyError:
                return  # still unavailable; look again on the next round
            del self._unsettled[checkpoint_id]
            if status in PENDING:
                log.info("checkpoint %d's losses were not stored: it is scored again",
                         checkpoint_id)  # fmt: skip
                self._released = False
            else:
                log.info("checkpoint %d is %s after all", checkpoint_id, status or "deleted")
                self._discard(path)

    def _score(self, session: Session, checkpoint: CheckpointRow) -> None:
        checkpoint_id, path = checkpoint.id, checkpoint.path  # read before any rollback
        label = f"checkpoint {checkpoint_id} (step {checkpoint.step})"
        storing = False  # the losses are being stored: an outage leaves it unknown whether
        try:
            run = self._database(
                session, lambda: session.get(Run, checkpoint.run_pk), "reading a run"
            )
            assert run is not None
            label = f"run {run.run_id} step {checkpoint.step}"
            hello = self.registry.runs.hello_of(run.run_id, run.config)
            data = self.registry.runs.prepare(hello)
            model = self.registry.models.model(hello)
            stored = StoredCheckpoint.open(path)  # its table; the tensors are streamed
            plan = self._database(
                session, lambda: budget_plan(session, run, checkpoint), f"planning {label}"
            )
            samples = None if plan is None else plan.measured
            batches = (
                data.batches
                if samples is None
                else data.only(samples.tolist(), self.registry.settings)
            )
            started = time.perf_counter()
            # the samples scored: those with a label token
            rows = sum(len(batch.indices) for batch in batches)
            tokens = sum(batch.input_ids.numel() for batch in batches)
            self.progress.start(checkpoint_id, rows, tokens)
            losses = self.group.score(
                run.config, stored, batches, model, run.n_samples,
                samples=None if samples is None else samples.tolist(),
                stop=self._stop, desc=label, on_batch=self._advance(checkpoint_id),
            )  # fmt: skip
            seconds = time.perf_counter() - started
            if not np.isfinite(losses).any():
                raise ValueError(
                    "no sample has a finite loss at this checkpoint (NaN or inf weights?)"
                )
            window, ranking, deltas, estimates = None, None, None, None
            if plan is not None:
                estimates = plan.estimates_after(losses, log_as=label)
                window, ranking = plan.window(estimates)
                deltas = estimates.delta
            elif run.has_window(checkpoint.step):
                window, ranking, deltas = self._database(
                    session,
                    lambda: measured_window(session, run, checkpoint, losses),
                    f"reading the losses {label}'s window starts from",
                )
            writing = time.perf_counter()
            storing = True
            self._store(
                session,
                checkpoint_id,
                lambda: checkpoint_store.store_scores(
                    session, checkpoint=checkpoint, losses=losses, window=window,
                    seconds=seconds, measured=samples, estimates=estimates,
                ),
            )  # fmt: skip
            self.metrics.scored(
                seconds=seconds,
                samples=int(np.isfinite(losses).sum()),
                write_seconds=time.perf_counter() - writing,
            )
        except checkpoint_store.CheckpointGone:
            self._rollback(session)
            log.warning("%s was deleted while it was scored: its losses are not stored", label)
            self._discard(path)
            return
        except ScoringAborted:
            self._rollback(session)
            self._mark_received(session, checkpoint_id)
            log.warning("stopped while scoring %s; it will be scored on restart", label)
            return
        except StoppedInOutage as exc:  # as a stop while scoring: no failure, no traceback
            self._rollback(session)
            self._mark_received(session, checkpoint_id)
            log.warning("%s; %s will be scored on restart", exc, label)
            return
        except RankLost as exc:  # not the checkpoint's fault: it waits for the restart
            self._rollback(session)
            self._mark_received(session, checkpoint_id)
            log.error("%s; %s stays pending and is scored after the restart", exc, label)
            return
        except DatabaseOutageTooLong as error:  # said in full by its message
            self._rollback(session)  # else the failure cannot be written on this session
            if storing:  # the commit may have been taken, its answer lost: no failure
                log.error(
                    "storing %s: %s; whether its losses were stored is looked at once the "
                    "database answers (if not, it is scored again)", label, error,
                )  # fmt: skip
                self._unsettled[checkpoint_id] = path
                self._released = False
                return
            log.error("scoring %s failed: %s", label, error)
            self._fail(session, checkpoint_id, f"{type(error).__name__}: {error}", path)
            return
        except Exception as error:
            self._rollback(session)
            log.exception("scoring %s failed", label)
            self._fail(session, checkpoint_id, f"{type(error).__name__}: {error}", path)
            return
        self._put_weights(self.weights, run, checkpoint, losses, window, ranking, deltas, estimates)
        scored = run.n_samples if samples is None else samples.size
        log.info(
            "scored %s (update %d): %d samples in %.2fs, %.1f samples/s",
            label,
            checkpoint.update_index,
            scored,
            seconds,
            scored / seconds if seconds else float("inf"),
        )
        self._discard(path)

    def _mark_received(self, session: Session, checkpoint_id: int) -> None:
        """Waiting again (scored after the restart), unless its losses were stored after all;
        through an outage (or a stop during one) it stays `scoring`, which the next start
        releases."""
        try:
            self._database(
                session,
                lambda: checkpoint_store.mark_received(session, checkpoint_id=checkpoint_id),
                f"putting checkpoint {checkpoint_id} back in the queue",
            )
        except (DatabaseOutageTooLong, StoppedInOutage) as exc:
            self._rollback(session)
            log.warning("%s; checkpoint %d is put back in the queue at the next start",
                        exc, checkpoint_id)  # fmt: skip

    def _advance(self, checkpoint_id: int) -> Callable[[int, int], None]:
        progress = self.progress
        return lambda samples, tokens: progress.advance(checkpoint_id, samples, tokens)

    def _discard(self, path: str) -> None:
        """A checkpoint's tensors once scored or failed: gone, unless kept on purpose."""
        if not self.keep_checkpoints:
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def _put_weights(
        cache: WeightsCache,
        run: Run,
        checkpoint: CheckpointRow,
        losses: np.ndarray,
        window: Window | None,
        ranking: np.ndarray | None,
        deltas: np.ndarray | None,
        estimates: Estimates | None,
    ) -> None:
        """The weights build_weights makes from the stored losses, made from the same values
        in memory (a non-finite loss is stored as NULL, and either way has no weight)."""
        try:
            served = served_weights(
                checkpoint, run.n_samples, losses, window, ranking, deltas, estimates
            )
            cache.put(run, served)
        except Exception:  # the weights are stored: the API builds them when asked
            log.exception("weights of run %s step %d not cached", run.run_id, checkpoint.step)
