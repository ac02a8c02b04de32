"""Loss rows on each backend: the engine's own queries (scorer_svc.storage.engines, chosen
once from the engine's dialect) give what the reference ORM queries
(tests/support/reference_queries.py) give on the same data; an engine the scorer has no
queries for is refused when it is made. PostgreSQL's bit-exact checks are in
test_losses_postgres.py."""

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import (
    DatabaseDriverMissing,
    UnsupportedDatabase,
    check_driver,
    make_engine,
    make_sessionmaker,
)
from scorer_svc.storage.engines import PSYCOPG, SQLITE, queries_of
from scorer_svc.storage.tables import Loss
from tests.support import reference_queries as reference
from tests.support.scorer import stored_run_config

N = 5
STEPS = {2: 1, 4: 2, 6: 3}  # step: update index
LOSSES = {  # run "a"; run "b" holds these plus 10, so a query that ignores the run shows
    2: [1.0, None, 2.5, 0.25, 3.0],
    4: [0.5, None, 2.75, None, 1.0],
    6: [0.125, 4.0, 2.0, 0.0, None],
}
RUNS = ("a", "b")  # "a": rows written by the engine's queries, "b": by the reference insert


def expected(run_id: str, step: int) -> list[float | None]:
    shift = 0 if run_id == "a" else 10
    return [None if v is None else v + shift for v in LOSSES[step]]


@pytest.fixture
def loss_db(database_url):
    """Runs "a" (rows written by the engine's insert) and "b" (by the reference insert), each
    with three checkpoints holding losses and one received checkpoint without any."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        writers = {"a": queries_of(session).insert_losses, "b": reference.insert_losses}
        for run_id, write in writers.items():
            run = run_store.create_run(session, config=stored_run_config(run_id, N), n_no_labels=0)
            for step, k in {**STEPS, 8: 1}.items():
                received = checkpoint_store.Received(step, k, "lora", "0" * 64, "-", 0)
                checkpoint_store.add_checkpoint(session, run=run, received=received)
            for step in STEPS:
                write(session, run_pk=run.id, step=step, values=expected(run_id, step))
        session.commit()
    yield sessions
    engine.dispose()


def test_each_backend_takes_its_own_queries(database_url):
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        assert queries_of(session) is (SQLITE if engine.dialect.name == "sqlite" else PSYCOPG)
    engine.dispose()


def test_both_inserts_store_every_value_and_null(loss_db):
    with loss_db() as session:
        for run_id in RUNS:
            run = run_store.get_run(session, run_id=run_id)
            for step in STEPS:
                rows = session.execute(
                    select(Loss.sample_index, Loss.loss)
                    .where(Loss.run_pk == run.id, Loss.step == step)
                    .order_by(Loss.sample_index)
                ).all()
                assert [tuple(r) for r in rows] == list(enumerate(expected(run_id, step)))


def test_the_insert_of_measured_samples_only_matches_the_reference(database_url):
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    indices = np.array([1, 3, 4])
    values = [0.5, None, 2.0]
    with sessions() as session:
        for run_id, write in (
            ("a", queries_of(session).insert_losses),
            ("b", reference.insert_losses),
        ):
            run = run_store.create_run(session, config=stored_run_config(run_id, N), n_no_labels=0)
            write(session, run_pk=run.id, step=2, values=values, indices=indices)
        session.commit()
        got = {
            run_id: loss_store.losses_at(
                session, run=run_store.get_run(session, run_id=run_id), step=2
            )
            for run_id in RUNS
        }
    np.testing.assert_array_equal(got["a"], [np.nan, 0.5, np.nan, np.nan, 2.0])
    np.testing.assert_array_equal(got["a"], got["b"])
    engine.dispose()


@pytest.mark.parametrize("run_id", RUNS)
def test_the_engines_loss_read_gives_the_references_nan_for_null(loss_db, run_id):
    with loss_db() as session:
        run = run_store.get_run(session, run_id=run_id)
        engine_read = queries_of(session).losses_at
        for step in (*STEPS, 8):  # step 8: no rows
            want = (
                np.array([np.nan if v is None else v for v in expected(run_id, step)])
                if step in STEPS
                else np.full(N, np.nan)
            )
            got = engine_read(session, run=run, step=step)
            want_read = reference.losses_at(session, run=run, step=step)
            for read in (got, want_read, loss_store.losses_at(session, run=run, step=step)):
                assert read.dtype == np.float64
                np.testing.assert_array_equal(read, want)


@pytest.mark.parametrize("run_id", RUNS)
def test_the_engines_history_queries_give_the_references(loss_db, run_id):
    with loss_db() as session:
        run = run_store.get_run(session, run_id=run_id)
        queries = queries_of(session)
        for index in range(N + 1):  # sample N: no rows
            want = [
                (step, k, expected(run_id, step)[index]) for step, k in STEPS.items() if index < N
            ]
            got = queries.sample_history(session, run=run, sample_index=index)
            assert got == reference.sample_history(session, run=run, sample_index=index) == want
            assert loss_store.sample_history(session, run=run, sample_index=index) == want
        wanted = [4, 0, 2, N]
        rows = [
            tuple(r) for r in queries.sample_history_rows(session, run=run, sample_indices=wanted)
        ]
        assert rows == reference.sample_history_rows(session, run=run, sample_indices=wanted)
        assert len(rows) == 3 * len(STEPS)
        histories = loss_store.sample_histories(session, run=run, sample_indices=wanted)
        assert histories == {
            i: reference.sample_history(session, run=run, sample_index=i) for i in wanted
        }


def test_histories_in_several_batches_give_the_references(loss_db, monkeypatch):
    monkeypatch.setattr(loss_store, "HISTORY_BATCH", 2)
    with loss_db() as session:
        run = run_store.get_run(session, run_id="a")
        got = loss_store.sample_histories(session, run=run, sample_indices=range(N))
        assert got == {
            i: reference.sample_history(session, run=run, sample_index=i) for i in range(N)
        }


@pytest.mark.parametrize(
    "url, named",
    [
        ("mysql://u:p@db/scores", "mysql+mysqldb"),
        ("sqlite+aiosqlite:///scores.db", "sqlite+aiosqlite (asyncio)"),
        ("postgresql+psycopg2://u@db/s", "postgresql+psycopg2"),
        ("postgresql+psycopg_async://u@db/s", "postgresql+psycopg (asyncio)"),
    ],
)
def test_an_engine_without_queries_is_refused_when_it_is_made(url, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedDatabase) as refused:
        make_engine(url)
    message = str(refused.value)
    assert message.startswith(f"the scorer does not support the database {named}: it supports")
    assert "sqlite:///PATH" in message and "postgresql+psycopg://" in message
    assert list(tmp_path.iterdir()) == []  # refused before anything was made
    with pytest.raises(DatabaseDriverMissing):  # the scorer's checks at start refuse it too
        check_driver(url)


def test_an_installed_driver_without_queries_is_refused_by_the_start_checks():
    with pytest.raises(UnsupportedDatabase, match=r"postgresql\+psycopg \(asyncio\)"):
        check_driver("postgresql+psycopg_async://scorer:s3cret@db/runs")


def test_a_session_of_another_sessionmaker_has_no_engine_queries(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'scorer.db'}")
    with sessionmaker(engine)() as session, pytest.raises(RuntimeError, match="make_sessionmaker"):
        queries_of(session)
    engine.dispose()


def test_losses_round_trip_through_the_backends_own_paths(database_url):
    """store_scores, losses_at and sample_history as the worker and the API use them, on each
    backend (SQLite: its fast paths; PostgreSQL: binary COPY and the packed read for the
    losses, test_losses_postgres.py, the ORM query for the history)."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        run = run_store.create_run(session, config=stored_run_config("r", N), n_no_labels=0)
        for step, k in STEPS.items():
            received = checkpoint_store.Received(step, k, "lora", "xxh3-128:" + "0" * 32, "-", 0)
            checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
            losses = np.array([np.nan if v is None else v for v in expected("a", step)])
            checkpoint_store.store_scores(
                session, checkpoint=checkpoint, losses=losses, window=None, seconds=0.5
            )
    with sessions() as session:
        run = run_store.get_run(session, run_id="r")
        for step in STEPS:
            want = np.array([np.nan if v is None else v for v in expected("a", step)])
            np.testing.assert_array_equal(loss_store.losses_at(session, run=run, step=step), want)
        for index in range(N):
            want_history = [(step, k, expected("a", step)[index]) for step, k in STEPS.items()]
            assert loss_store.sample_history(session, run=run, sample_index=index) == want_history
        assert checkpoint_store.scored_steps(session, run=run) == sorted(STEPS)
    engine.dispose()
