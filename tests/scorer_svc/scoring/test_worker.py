"""The worker on a real SQLite file: cut-off checkpoints are re-scored, a stop stores nothing."""

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from common.selection import delta_weights
from common.wire.protocol import encode_checkpoint, encode_hello
from delta_loss_devtools.waiting import wait_until
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.weights import WeightsCache, build_weights
from scorer_svc.scoring.worker import StoppedInOutage, Worker
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.outages import DatabaseOutageTooLong, status_of
from scorer_svc.storage.tables import FAILED, RECEIVED, SCORED, SCORING, CheckpointRow, Loss
from tests.support.data import make_samples
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered
from tests.support.worker_parts import worker_parts

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def queued(tiny_model, tmp_path, database_url):
    """A run registered and its first checkpoint acknowledged, as the intake leaves them, on
    each database backend."""
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(make_samples(10)))
    settings = Settings(data_dir=tmp_path / "data", device="cpu", database_url=database_url)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    intake = Intake(settings, sessions, Registry(settings), on_queued=lambda: None, instance="here")
    hello = make_hello(tiny_model, dataset, run_id="run-w")
    reply = until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))
    assert reply["status"] == "registered"
    frames = encode_checkpoint(
        run_id="run-w",
        step=3,
        update_index=1,
        kind="lora",
        tensors=lora_checkpoints(tiny_model, 1)[0],
    )
    assert intake_upload(intake, frames)["status"] == "queued"
    return settings, sessions


def worker_for(settings, sessions, **extra) -> Worker:
    """This scorer's worker on the test's database, failures kept in memory."""
    return Worker(
        sessions, Registry(settings), failures=UnrecordedFailures(), keep_checkpoints=False,
        instance="here", **worker_parts(**extra),
    )  # fmt: skip


def queue_checkpoint(settings, sessions, tiny_model, *, step, update_index, drift) -> None:
    """Checkpoint `step` of run-w acknowledged by the intake: the LoRA tensors after `drift`
    rounds of drift."""
    intake = Intake(settings, sessions, Registry(settings), on_queued=lambda: None, instance="here")
    frames = encode_checkpoint(
        run_id="run-w", step=step, update_index=update_index, kind="lora",
        tensors=lora_checkpoints(tiny_model, drift)[drift - 1],
    )  # fmt: skip
    assert intake_upload(intake, frames)["status"] == "queued"


def _status_and_rows(sessions):
    with sessions() as session:
        checkpoint = session.scalar(select(CheckpointRow))
        rows = session.scalars(select(Loss)).all()
        return checkpoint.status, len(rows), checkpoint.path


def test_checkpoint_cut_off_while_scoring_is_scored_by_a_new_worker(queued):
    settings, sessions = queued
    with sessions() as session:  # a scorer that died mid-scoring leaves the row like this
        checkpoint_store.mark_scoring(session, checkpoint=session.scalar(select(CheckpointRow)))
    assert _status_and_rows(sessions)[:2] == (SCORING, 0)
    worker = worker_for(settings, sessions)
    assert worker.run_once() is True
    status, n_rows, path = _status_and_rows(sessions)
    assert (status, n_rows) == (SCORED, 10)
    assert worker.run_once() is False  # nothing left, nothing scored twice
    assert not Path(path).exists()  # tensors dropped once scored


def test_stop_during_scoring_leaves_the_checkpoint_pending_and_stores_nothing(queued):
    settings, sessions = queued
    worker = worker_for(settings, sessions)
    worker._stop.set()  # the stop arrives before the first batch
    assert worker.run_once() is True
    status, n_rows, path = _status_and_rows(sessions)
    assert (status, n_rows) == (RECEIVED, 0)
    assert Path(path).exists()  # kept for the restart


@SQLITE_ONLY  # a read-only SQLite file stands for a database that takes no write
def test_read_only_database_fails_the_checkpoint_in_memory_then_on_disk(queued, tmp_path):
    settings, sessions = queued
    db_path = tmp_path / "db" / "scorer.db"
    read_only = make_sessionmaker(
        make_engine(f"sqlite:///file:{db_path}?mode=ro&uri=true", busy_timeout_seconds=1)
    )
    failures = UnrecordedFailures()
    worker = Worker(
        read_only, Registry(settings), failures=failures, keep_checkpoints=False, instance="here",
        **worker_parts(),
    )  # fmt: skip
    assert worker.run_once() is True
    with sessions() as session:
        checkpoint = session.scalar(select(CheckpointRow))
        assert checkpoint.status == RECEIVED  # the database could not take any write
        error = failures.get(checkpoint.id)
    assert error is not None and "readonly" in error
    assert _status_and_rows(sessions)[1] == 0
    assert worker.run_once() is False  # not retried while the failure stands
    worker.sessions = sessions  # the database is writable again
    worker.run_once()
    status, n_rows, _ = _status_and_rows(sessions)
    assert (status, n_rows) == ("failed", 0)
    assert failures.get(checkpoint.id) is None and failures.pending() == {}


@pytest.mark.parametrize("keep", [False, True])
def test_a_failed_checkpoints_tensors_go_unless_kept(queued, keep):
    settings, sessions = queued
    path = Path(_status_and_rows(sessions)[2])
    path.write_bytes(b"not a safetensors file")  # scoring it fails
    worker = Worker(
        sessions,
        Registry(settings),
        failures=UnrecordedFailures(),
        keep_checkpoints=keep,
        instance="here",
        **worker_parts(),
    )
    assert worker.run_once() is True
    assert _status_and_rows(sessions)[:2] == ("failed", 0)
    assert path.exists() is keep


@SQLITE_ONLY
def test_tensors_of_a_failure_held_in_memory_stay_until_it_is_recorded(queued, tmp_path):
    settings, sessions = queued
    path = Path(_status_and_rows(sessions)[2])
    path.write_bytes(b"not a safetensors file")
    db_path = tmp_path / "db" / "scorer.db"
    read_only = make_sessionmaker(
        make_engine(f"sqlite:///file:{db_path}?mode=ro&uri=true", busy_timeout_seconds=1)
    )
    worker = Worker(
        read_only,
        Registry(settings),
        failures=UnrecordedFailures(),
        keep_checkpoints=False,
        instance="here",
        **worker_parts(),
    )
    worker.run_once()
    assert path.exists()  # a restart would score it again
    worker.sessions = sessions
    worker.run_once()  # the failure is written now
    assert _status_and_rows(sessions)[0] == "failed" and not path.exists()


def test_the_worker_hands_the_api_the_weights_the_stored_losses_give(queued, tiny_model):
    """The weights cached as a checkpoint is stored equal, bit for bit, those rebuilt from the
    database, for an update without a window and one with."""
    settings, sessions = queued
    queue_checkpoint(settings, sessions, tiny_model, step=5, update_index=2, drift=2)
    cache = WeightsCache()
    worker = worker_for(settings, sessions, weights=cache)
    assert worker.run_once() and worker.run_once()
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-w")
        for step, update in ((3, 1), (5, 2)):
            checkpoint = checkpoint_store.get_checkpoint(session, run=run, step=step)
            rebuilt = build_weights(session, run, checkpoint)
            cached = cache.get(None, run, checkpoint)  # no session: it cannot read anything
            assert cached.update_index == update
            assert (cached.window, cached.n_ranked) == (rebuilt.window, rebuilt.n_ranked)
            stats = (cached.delta_in_window, cached.delta_outside)
            assert stats == (rebuilt.delta_in_window, rebuilt.delta_outside)
            if update == 1:  # no window: no loss reductions to report
                assert stats == (None, None)
            else:  # an empty window (cut where deltas turn negative) has no mean inside
                window = cached.window
                assert (stats[0] is None) == (window.end <= window.start)
                assert stats[1] is not None
            assert cached.values.tobytes() == rebuilt.values.tobytes()


def test_update_one_of_a_later_epoch_is_weighted_through_the_window_at_its_start(
    queued, tiny_model
):
    """Only the run's first checkpoint is weighted uniformly: update 1 of the next epoch ranks
    the loss reductions against the run's initial losses with the window at t = 0."""
    settings, sessions = queued
    queue_checkpoint(settings, sessions, tiny_model, step=9, update_index=1, drift=2)
    worker = worker_for(settings, sessions)
    assert worker.run_once() and worker.run_once()
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-w")
        assert run.initial_step == 3
        later = build_weights(
            session, run, checkpoint_store.get_checkpoint(session, run=run, step=9)
        )
        first = build_weights(
            session, run, checkpoint_store.get_checkpoint(session, run=run, step=3)
        )
        initial = loss_store.losses_at(session, run=run, step=3)
        current = loss_store.losses_at(session, run=run, step=9)
    assert first.window is None
    window, expected = delta_weights(initial, current, 1, run.update_times, run.window_size)
    assert later.window == window and (window.t, window.start) == (0, 0)
    assert later.values.tobytes() == expected.tobytes()


def test_a_later_update_one_scored_without_a_window_is_served_as_it_was(queued, tiny_model):
    """A database from before update 1 of later epochs had a window: such a checkpoint was
    scored and served uniform, and is served so still."""
    settings, sessions = queued
    queue_checkpoint(settings, sessions, tiny_model, step=9, update_index=1, drift=2)
    worker = worker_for(settings, sessions)
    assert worker.run_once()  # the initial checkpoint, step 3
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-w")
        old = checkpoint_store.get_checkpoint(session, run=run, step=9)
        checkpoint_store.mark_scoring(session, checkpoint=old)
        losses = np.linspace(1.0, 2.0, run.n_samples)
        checkpoint_store.store_scores(
            session, checkpoint=old, losses=losses, window=None, seconds=1.0
        )
        served = build_weights(
            session, run, checkpoint_store.get_checkpoint(session, run=run, step=9)
        )
    assert served.window is None
    assert served.values.tolist() == [1 / run.n_samples] * run.n_samples


def test_the_worker_reports_what_it_scores_and_fails_to_its_metrics(queued, tiny_model):
    settings, sessions = queued
    metrics = ScorerMetrics()
    worker = worker_for(settings, sessions, metrics=metrics)
    assert worker.run_once()

    def value(name: str) -> float:
        found = metrics.registry.get_sample_value(name)
        assert found is not None, name
        return found

    assert value("scorer_samples_scored_total") == 10
    assert value("scorer_scoring_seconds_count") == 1 and value("scorer_scoring_seconds_sum") > 0
    assert value("scorer_database_write_seconds_count") == 1
    assert value("scorer_samples_per_second") > 0
    assert value("scorer_checkpoint_failures_total") == 0
    queue_checkpoint(settings, sessions, tiny_model, step=5, update_index=2, drift=1)
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-w")
        Path(checkpoint_store.get_checkpoint(session, run=run, step=5).path).write_bytes(
            b"not tensors"
        )
    assert worker.run_once()
    assert value("scorer_checkpoint_failures_total") == 1
    assert value("scorer_samples_scored_total") == 10


class RecordedProgress(ScoringProgress):
    """Keeps what the API would have read after each batch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def advance(self, checkpoint_id, samples, tokens=0):
        super().advance(checkpoint_id, samples, tokens)
        self.seen.append(self.get(checkpoint_id))


def test_the_worker_reports_its_progress_batch_by_batch(queued):
    settings, sessions = queued
    progress = RecordedProgress()
    worker = worker_for(settings, sessions, progress=progress)
    assert worker.run_once()
    scored = [p.scored for p in progress.seen]
    assert scored == sorted(scored) and scored[-1] == 10  # every sample, in growing steps
    assert {p.total for p in progress.seen} == {10}
    # the time left is reckoned in padded tokens, and is nothing once every token is done
    tokens = [p.tokens for p in progress.seen]
    assert tokens == sorted(tokens) and tokens[-1] == progress.seen[-1].total_tokens > 0
    assert progress.seen[-1].eta_seconds == 0
    with sessions() as session:
        checkpoint = session.scalar(select(CheckpointRow))
    assert progress.get(checkpoint.id) is None  # done: nothing left to report


# A database that stops answering, without a server to stop: what the worker meets when its
# connection is lost (a PostgreSQL restart, a failover) is the driver's error on a connection
# SQLAlchemy takes for lost (invalidated): is_transient.


def lost_connection() -> OperationalError:
    """The error of a statement whose connection was lost: it may or may not have been done
    (a COMMIT taken by the server whose answer never came back)."""
    return OperationalError(
        "COMMIT", None, ConnectionError("server closed the connection unexpectedly"),
        connection_invalidated=True,
    )  # fmt: skip


class LostConnections:
    """While entered, every statement `matching` (its SQL) fails on the engine as one whose
    connection was lost: the driver's own OperationalError, taken for a disconnect, so that
    the connection is invalidated and the session's transaction with it, as in an outage.
    on_failure() runs at each."""

    def __init__(
        self,
        sessions,
        matching: Callable[[str], bool],
        on_failure: Callable[[], None] | None = None,
    ):
        self.engine = sessions.kw["bind"]
        self.matching = matching
        self.on_failure = on_failure
        self.failed = 0

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if self.matching(statement):
            self.failed += 1
            if self.on_failure is not None:
                self.on_failure()
            dbapi = self.engine.dialect.loaded_dbapi
            raise dbapi.OperationalError("server closed the connection unexpectedly")

    def _disconnect(self, context):
        if self.failed and "server closed the connection" in str(context.original_exception):
            context.is_disconnect = True

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "handle_error", self._disconnect)
        return self

    def __exit__(self, *_):
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "handle_error", self._disconnect)


def reading_a_run(statement: str) -> bool:
    """The worker's read of the run of the checkpoint it claimed (session.get)."""
    return "FROM runs" in statement and "WHERE runs.id = " in statement


def no_retry(settings: Settings) -> Settings:
    """database_outage_seconds 0: the first lost connection outlasts the setting."""
    return settings.model_copy(update={"database_outage_seconds": 0})


def tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


@pytest.mark.parametrize("taken", [False, True], ids=["claim-lost", "claim-taken-answer-lost"])
def test_an_outage_at_claim_time_fails_nothing_and_the_checkpoint_is_scored_after_it(
    queued, monkeypatch, taken
):
    settings, sessions = queued
    worker = worker_for(no_retry(settings), sessions)
    real_claim = checkpoint_store.claim

    def claim(session, **where):
        if taken:
            real_claim(session, **where)
        raise lost_connection()

    monkeypatch.setattr(checkpoint_store, "claim", claim)
    with pytest.raises(DatabaseOutageTooLong):  # the loop looks again a little later
        worker.run_once()
    assert worker.failures.pending() == {}  # no 409 for a checkpoint never scored
    assert _status_and_rows(sessions)[:2] == (SCORING if taken else RECEIVED, 0)

    monkeypatch.setattr(checkpoint_store, "claim", real_claim)  # the database answers again
    assert worker.run_once() is True
    status, n_rows, path = _status_and_rows(sessions)
    assert (status, n_rows) == (SCORED, 10)
    assert not Path(path).exists()
    assert worker.run_once() is False


@pytest.mark.parametrize("taken", [False, True], ids=["store-lost", "store-taken-answer-lost"])
def test_an_outage_while_storing_fails_nothing_and_the_checkpoint_is_settled_after_it(
    queued, monkeypatch, taken
):
    """The commit of the losses may have been taken when its answer was lost: a failure
    written then would overwrite stored losses. The checkpoint is looked at again once the
    database answers: its tensors go if its losses are stored, else it is scored again."""
    settings, sessions = queued
    worker = worker_for(no_retry(settings), sessions)
    real_store = checkpoint_store.store_scores

    def store(session, **what):
        if taken:
            real_store(session, **what)
        raise lost_connection()

    monkeypatch.setattr(checkpoint_store, "store_scores", store)
    assert worker.run_once() is True
    assert worker.failures.pending() == {}
    status, n_rows, path = _status_and_rows(sessions)
    assert (status, n_rows) == ((SCORED, 10) if taken else (SCORING, 0))
    assert Path(path).exists()  # kept until what became of the store is known

    monkeypatch.setattr(checkpoint_store, "store_scores", real_store)  # the database answers again
    assert worker.run_once() is (not taken)  # scored again only if not stored
    assert _status_and_rows(sessions)[:2] == (SCORED, 10)
    assert not Path(path).exists()
    assert worker.run_once() is False and worker.failures.pending() == {}


def test_an_outage_reading_the_run_fails_the_checkpoint_in_the_database(queued, caplog):
    """The session of the give-up is rolled back before the failure is written on it: the
    database, answering again, takes the failure (no failure served from memory)."""
    settings, sessions = queued
    caplog.set_level(logging.INFO)
    worker = worker_for(no_retry(settings), sessions)
    with LostConnections(sessions, reading_a_run) as lost:
        assert worker.run_once() is True
    assert lost.failed == 1
    assert worker.failures.pending() == {}
    with sessions() as session:
        checkpoint = session.scalar(select(CheckpointRow))
        assert checkpoint.status == FAILED
        assert "DatabaseOutageTooLong" in checkpoint.error
        assert "database_outage_seconds (0)" in checkpoint.error
    assert not Path(checkpoint.path).exists()
    assert not [r for r in caplog.records if "cannot record" in r.getMessage()]
    assert tracebacks(caplog) == []


def test_a_stop_during_an_outage_leaves_the_checkpoint_for_the_restart(queued, caplog):
    """As a stop while scoring: the checkpoint waits again, its tensors kept, no failure and
    no traceback, the outage not waited out."""
    settings, sessions = queued
    caplog.set_level(logging.INFO)
    worker = worker_for(settings, sessions)
    assert settings.database_outage_seconds > 0
    with LostConnections(sessions, reading_a_run, on_failure=worker._stop.set) as lost:
        assert worker.run_once() is True
    assert lost.failed == 1  # not tried again once stopped
    assert worker.failures.pending() == {}
    status, n_rows, path = _status_and_rows(sessions)
    assert (status, n_rows) == (RECEIVED, 0)
    assert Path(path).exists()
    assert tracebacks(caplog) == []
    assert any("scored on restart" in r.getMessage() for r in caplog.records)


def test_a_stop_during_an_outage_keeps_losses_whose_store_was_taken(queued, monkeypatch, caplog):
    settings, sessions = queued
    caplog.set_level(logging.INFO)
    worker = worker_for(settings, sessions)
    real_store = checkpoint_store.store_scores

    def store(session, **what):
        real_store(session, **what)  # taken; its answer lost, and the scorer told to stop
        worker._stop.set()
        raise lost_connection()

    monkeypatch.setattr(checkpoint_store, "store_scores", store)
    assert worker.run_once() is True
    assert worker.failures.pending() == {}
    assert _status_and_rows(sessions)[:2] == (SCORED, 10)  # not put back in the queue
    assert tracebacks(caplog) == []


def test_a_stop_during_an_outage_at_claim_time_ends_the_loop_quietly(queued, monkeypatch, caplog):
    settings, sessions = queued
    caplog.set_level(logging.INFO)
    worker = worker_for(settings, sessions)

    def claim(session, **where):
        worker._stop.set()
        raise lost_connection()

    monkeypatch.setattr(checkpoint_store, "claim", claim)
    worker.start()
    worker.stop(timeout=300)
    assert not worker._thread.is_alive()
    assert worker.failures.pending() == {}
    assert _status_and_rows(sessions)[0] == RECEIVED
    assert tracebacks(caplog) == []
    with pytest.raises(StoppedInOutage):
        worker.run_once()


def test_a_database_error_in_the_loop_is_logged_once_with_its_traceback(
    queued, monkeypatch, caplog
):
    """Not an outage (not tried again), met at every round: one line with the traceback,
    then the DatabaseStatus's one a minute (its clock stands still here), not one a round."""
    settings, sessions = queued
    caplog.set_level(logging.INFO)
    worker = worker_for(settings, sessions)
    status_of(sessions).clock = lambda: 1000.0
    rounds = []

    def pending(session, **where):
        rounds.append(1)
        raise ProgrammingError("SELECT", None, ValueError("a query at fault"))

    monkeypatch.setattr(checkpoint_store, "pending", pending)
    worker.start()
    try:
        wait_until(lambda: len(rounds) >= 3, "the worker to meet the error three times")
    finally:
        worker.stop(timeout=300)
    assert not worker._thread.is_alive()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].exc_info is not None
    assert "database error while looking for a checkpoint" in logged[0].getMessage()
