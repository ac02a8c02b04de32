"""A scorer that stops by itself once its work is done: after a number of runs have ended
(their trainers reported it) and none of its checkpoints waits to be scored. For batch jobs
and `docker compose --profile cpu up`, which end when every container has."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage.tables import PENDING, Run, now

log = logging.getLogger(__name__)


def ended_runs(session: Session, *, instance: str, since: datetime) -> int:
    """How many of this instance's runs ended at or after `since` (and are still ended)."""
    query = select(func.count()).where(Run.instance == instance, Run.ended_at >= since)
    return int(session.execute(query).scalar_one())


def work_done(session: Session, *, instance: str, since: datetime, runs: int) -> bool:
    """Whether `runs` runs have ended since `since` and no checkpoint of this instance is
    queued or being scored."""
    if ended_runs(session, instance=instance, since=since) < runs:
        return False
    counts = checkpoint_store.count_checkpoints(session, instance=instance)
    return not any(counts.get(status, 0) for status in PENDING)


class ExitAfterRuns:
    """Polls the database in its own thread and calls on_done once: with 0 when the work is
    done, with 1 when the scoring worker has stopped (what is queued would never be scored,
    and a batch job waiting for the scorer to end would wait for ever)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        instance: str,
        runs: int,
        on_done: Callable[[int], None],
        worker_alive: Callable[[], bool] | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.instance = instance
        self.runs = runs
        self.on_done = on_done
        self.worker_alive = worker_alive
        self.poll_seconds = poll_seconds
        self.since = now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="exit-after-runs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self.worker_alive is not None and not self.worker_alive():
                log.error("the scoring worker stopped: stopping with exit code 1 (exit_after_runs)")
                self.on_done(1)
                return
            try:
                with self.sessions() as session:
                    done = work_done(
                        session, instance=self.instance, since=self.since, runs=self.runs
                    )
            except Exception:  # a database hiccup: look again at the next poll
                log.exception("could not tell whether the runs have ended")
                continue
            if done:
                log.info(
                    "%d run(s) ended and nothing is left to score: stopping (exit_after_runs)",
                    self.runs,
                )
                self.on_done(0)
                return
