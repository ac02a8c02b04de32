"""A checkpoint's failure or its return to the queue changes only a checkpoint still pending:
a store whose answer was lost with its connection may have been committed, and its losses
stay, whatever the worker then believed."""

import numpy as np
from sqlalchemy import func, select

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.tables import FAILED, RECEIVED, SCORED, CheckpointRow, Loss
from tests.support.scorer import stored_run_config

N = 8


def checkpoints(database_url: str):
    """The sessions, and run-m's checkpoints: step 1 scored, step 2 being scored, step 3
    waiting."""
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session:
        run = run_store.create_run(session, config=stored_run_config("run-m", N), n_no_labels=0)
        added = {}
        for step in (1, 2, 3):
            received = checkpoint_store.Received(
                step, step, "lora", f"{step:064d}", f"step-{step}", 100
            )
            added[step] = checkpoint_store.add_checkpoint(session, run=run, received=received).id
        checkpoint_store.store_scores(
            session, checkpoint=session.get(CheckpointRow, added[1]),
            losses=np.linspace(1.0, 2.0, N), window=None, seconds=1.0,
        )  # fmt: skip
        checkpoint_store.mark_scoring(session, checkpoint=session.get(CheckpointRow, added[2]))
    return sessions, added


def statuses(sessions) -> dict[int, tuple[str, str | None]]:
    with sessions() as session:
        rows = session.execute(
            select(CheckpointRow.step, CheckpointRow.status, CheckpointRow.error)
        )
        return {step: (status, error) for step, status, error in rows}


def test_mark_failed_fails_only_a_pending_checkpoint(database_url):
    sessions, ids = checkpoints(database_url)
    with sessions() as session:
        done = [
            checkpoint_store.mark_failed(session, checkpoint_id=ids[1], error="late"),
            checkpoint_store.mark_failed(session, checkpoint_id=ids[2], error="broke"),
            checkpoint_store.mark_failed(session, checkpoint_id=ids[3], error="gave up"),
            checkpoint_store.mark_failed(session, checkpoint_id=ids[3], error="again"),
            checkpoint_store.mark_failed(session, checkpoint_id=10_000, error="gone"),
        ]
        n_losses = session.scalar(select(func.count()).select_from(Loss))
    assert statuses(sessions) == {
        1: (SCORED, None), 2: (FAILED, "broke"), 3: (FAILED, "gave up"),
    }  # fmt: skip
    assert n_losses == N  # the scored checkpoint's losses stay
    assert done == [False, True, True, False, False]


def test_mark_received_puts_back_only_a_checkpoint_being_scored(database_url):
    sessions, ids = checkpoints(database_url)
    with sessions() as session:
        done = [
            checkpoint_store.mark_received(session, checkpoint_id=ids[step]) for step in (1, 2, 3)
        ]
    assert statuses(sessions) == {1: (SCORED, None), 2: (RECEIVED, None), 3: (RECEIVED, None)}
    assert done == [False, True, False]
