"""PostgreSQL restarted under a scoring worker: the worker waits for it (database_outage_seconds)
and stores the checkpoint's losses once it is back, as an uninterrupted run stores them; an
outage longer than the setting while the losses are stored fails nothing (the commit may have
been taken): the checkpoint is looked at again once the database answers, and scored again."""

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import select

from common.wire.protocol import encode_checkpoint, encode_hello
from delta_loss_devtools.waiting import wait_until
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.worker import Worker
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.outages import status_of
from scorer_svc.storage.tables import FAILED, SCORED, CheckpointRow, Run
from tests.support.data import make_samples
from tests.support.postgres import PostgresCluster
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered
from tests.support.worker_parts import worker_parts

pytestmark = pytest.mark.slow  # a PostgreSQL server of their own, stopped and started

GATE_SECONDS = 300  # only ends a wait for something stuck


@pytest.fixture(scope="module")
def restartable_postgres(request) -> Iterator[PostgresCluster]:
    """A PostgreSQL server of these tests' own, which they stop and start; skipped (or failed
    in CI) where the shared one is (the postgres_cluster fixture)."""
    shared = request.getfixturevalue("postgres_cluster")
    cluster = PostgresCluster(shared.bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def running(restartable_postgres) -> Iterator[PostgresCluster]:
    """The cluster, running again at the end of the test whatever it did."""
    yield restartable_postgres
    with contextlib.suppress(RuntimeError):  # already running
        restartable_postgres.resume()


class GatedProgress(ScoringProgress):
    """Progress that holds the worker at its first scored batch until the test opens the gate:
    the database is stopped while a checkpoint is being scored, before its losses are stored."""

    def __init__(self) -> None:
        super().__init__()
        self.scoring = threading.Event()
        self.gate = threading.Event()

    def advance(self, checkpoint_id: int, samples: int, tokens: int) -> None:
        super().advance(checkpoint_id, samples, tokens)
        self.scoring.set()
        assert self.gate.wait(GATE_SECONDS), "the test never opened the gate"


@pytest.fixture(scope="module")
def tensors(tiny_model):
    """One checkpoint's tensors, the same for every run of the module (a peft model's LoRA
    tensors start random)."""
    return lora_checkpoints(tiny_model, 1)[0]


def queue_one(settings: Settings, tiny_model, tmp_path, tensors):
    """run-o registered and its initial checkpoint (tensors) acknowledged by the intake; the
    sessions and the checkpoint's id."""
    dataset = tmp_path / "train.json"
    if not dataset.exists():
        dataset.write_text(json.dumps(make_samples(10)))
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    intake = Intake(settings, sessions, Registry(settings), on_queued=lambda: None, instance="here")
    hello = make_hello(tiny_model, dataset, run_id="run-o")
    reply = until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))
    assert reply["status"] == "registered"
    frames = encode_checkpoint(
        run_id="run-o", step=3, update_index=1, kind="lora", tensors=tensors,
    )  # fmt: skip
    assert intake_upload(intake, frames)["status"] == "queued"
    with sessions() as session:
        return sessions, session.scalar(select(CheckpointRow.id))


def worker_on(settings: Settings, sessions, progress: ScoringProgress | None = None) -> Worker:
    return Worker(
        sessions, Registry(settings), failures=UnrecordedFailures(), keep_checkpoints=True,
        instance="here", **worker_parts(progress=progress or ScoringProgress()),
    )  # fmt: skip


def stored(sessions, checkpoint_id: int) -> tuple[str, str | None, np.ndarray | None]:
    """The checkpoint's status, error, and losses when scored."""
    with sessions() as session:
        checkpoint = session.get(CheckpointRow, checkpoint_id)
        run = session.get(Run, checkpoint.run_pk)
        losses = None
        if checkpoint.status == SCORED:
            losses = loss_store.losses_at(session, run=run, step=checkpoint.step)
        return checkpoint.status, checkpoint.error, losses


def status_when_up(sessions, checkpoint_id: int) -> str | None:
    try:
        return stored(sessions, checkpoint_id)[0]
    except Exception:  # the server is still starting
        return None


def tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


def score(settings: Settings, sessions, checkpoint_id: int, during=None) -> Worker:
    """A worker thread scores the checkpoint; during(gate's progress) runs while it is held
    at its first batch, before the gate opens (None: it is not held)."""
    progress = GatedProgress()
    worker = worker_on(settings, sessions, progress)
    worker.start()
    try:
        assert progress.scoring.wait(GATE_SECONDS), "the checkpoint was never scored"
        if during is not None:
            during(progress)
        progress.gate.set()
        wait_until(lambda: status_when_up(sessions, checkpoint_id) in (SCORED, FAILED),
                   "the checkpoint to be scored", timeout=GATE_SECONDS)  # fmt: skip
    finally:
        progress.gate.set()
        worker.stop()
    return worker


def test_a_postgresql_restart_while_scoring_is_a_pause(
    running, tiny_model, tmp_path, tensors, caplog
):
    caplog.set_level(logging.INFO)
    reference = Settings(data_dir=tmp_path / "reference", device="cpu", database_url=running.url())
    ref_sessions, ref_id = queue_one(reference, tiny_model, tmp_path, tensors)
    score(reference, ref_sessions, ref_id)
    status, _, uninterrupted = stored(ref_sessions, ref_id)
    assert status == SCORED and uninterrupted is not None

    settings = Settings(data_dir=tmp_path / "data", device="cpu", database_url=running.url())
    assert settings.database_outage_seconds == 120  # the default rides out a restart
    sessions, checkpoint_id = queue_one(settings, tiny_model, tmp_path, tensors)
    database = status_of(sessions)

    def restart(progress: GatedProgress) -> None:
        running.halt()  # the worker's connection ends with an administrator shutdown
        progress.gate.set()
        wait_until(lambda: database.trouble() is not None, "the worker to meet the outage")
        errors_seen = database._errors
        # the worker keeps trying: a few more failed tries, with growing pauses
        wait_until(lambda: database._errors >= errors_seen + 3, "tries during the outage")
        assert stored_status_unknown(sessions, checkpoint_id)
        running.resume()

    score(settings, sessions, checkpoint_id, during=restart)
    status, error, losses = stored(sessions, checkpoint_id)
    assert (status, error) == (SCORED, None)
    assert losses is not None
    assert losses.tobytes() == uninterrupted.tobytes()  # bit-equal, NaN included
    assert tracebacks(caplog) == []
    messages = [r.getMessage() for r in caplog.records]
    outage = [m for m in messages if m.startswith("database unavailable")]
    assert len(outage) == 1 and "database_outage_seconds" in outage[0], messages
    assert len([m for m in messages if "answers again" in m]) == 1, messages
    assert not [m for m in messages if "failed" in m and "scoring" in m], messages


def stored_status_unknown(sessions, checkpoint_id: int) -> bool:
    """The database does not answer (the outage is real)."""
    return status_when_up(sessions, checkpoint_id) is None


def test_an_outage_longer_than_the_setting_while_storing_fails_nothing(
    running, tiny_model, tmp_path, tensors, caplog
):
    """The losses' commit may have been taken when its answer was lost with the connection: no
    failure is recorded (it could overwrite stored losses), the tensors stay, and once the
    database answers the checkpoint is looked at again: not stored, it is scored again."""
    caplog.set_level(logging.INFO)
    settings = Settings(
        data_dir=tmp_path / "data", device="cpu", database_url=running.url(),
        database_outage_seconds=0.5,
    )  # fmt: skip
    sessions, checkpoint_id = queue_one(settings, tiny_model, tmp_path, tensors)
    progress = GatedProgress()
    worker = worker_on(settings, sessions, progress)
    worker.start()
    try:
        assert progress.scoring.wait(GATE_SECONDS), "the checkpoint was never scored"
        running.halt()
        progress.gate.set()
        wait_until(lambda: gave_up_storing(caplog) or worker.failures.pending(),
                   "the worker to give up storing", timeout=GATE_SECONDS)  # fmt: skip
        assert worker.failures.pending() == {}  # no failure, not even served from memory
        gave_up = gave_up_storing(caplog)
        assert gave_up is not None and "database_outage_seconds (0.5)" in gave_up
        running.resume()
        wait_until(lambda: status_when_up(sessions, checkpoint_id) == SCORED,
                   "the checkpoint to be scored again", timeout=GATE_SECONDS)  # fmt: skip
    finally:
        progress.gate.set()
        worker.stop()
    status, error, losses = stored(sessions, checkpoint_id)
    assert (status, error) == (SCORED, None) and losses is not None
    assert worker.failures.pending() == {}
    assert tracebacks(caplog) == []


def gave_up_storing(caplog) -> str | None:
    for record in list(caplog.records):
        if "whether its losses were stored" in record.getMessage():
            return record.getMessage()
    return None
