"""Storage: checkpoints on disk (raw frames written as safetensors read back bit for bit), and
loss rows in SQLite (each query's fast path and portable path give the same results)."""

import numpy as np
import pytest
import torch
from sqlalchemy import select

from common.wire.protocol import encode_checkpoint
from scorer_svc.storage import crud
from scorer_svc.storage.checkpoint_files import CheckpointWriter, read_checkpoint
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.tables import Loss
from tests.support.scorer import stored_run_config
from tests.support.wire import assemble


def test_chunks_become_a_safetensors_file_with_the_same_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.weight": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, generator=g).half(),
        "d.count": torch.arange(5),
        "e.empty": torch.zeros(0, 4),
    }
    messages = encode_checkpoint(
        run_id="r", step=1, update_index=1, kind="full", tensors=tensors, chunk_bytes=16
    )
    header, _ = assemble(messages)
    path = tmp_path / "step.safetensors"
    writer = CheckpointWriter(path, [(e.name, e.dtype, e.shape, e.length) for e in header.tensors])
    for message in messages[1:-1]:  # chunk by chunk, as they arrive
        assert writer.path.with_suffix(".partial").exists() and not path.exists()
        writer.write(message[1])
    size = writer.commit()
    assert size == path.stat().st_size and not path.with_suffix(".partial").exists()
    back = read_checkpoint(path)
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


# Loss rows: the SQLite fast path and the portable path of each query, on one SQLite file.

N = 5
STEPS = {2: 1, 4: 2, 6: 3}  # step: update index
LOSSES = {  # run "a"; run "b" holds these plus 10, so a query that ignores the run shows
    2: [1.0, None, 2.5, 0.25, 3.0],
    4: [0.5, None, 2.75, None, 1.0],
    6: [0.125, 4.0, 2.0, 0.0, None],
}
WRITERS = {"a": crud.insert_losses_sqlite, "b": crud.insert_losses_portable}


def expected(run_id: str, step: int) -> list[float | None]:
    shift = 0 if run_id == "a" else 10
    return [None if v is None else v + shift for v in LOSSES[step]]


@pytest.fixture
def loss_db(tmp_path):
    """Runs "a" (rows written by the SQLite path) and "b" (by the portable path), each with
    three checkpoints holding losses and one received checkpoint without any."""
    engine = make_engine(f"sqlite:///{tmp_path / 'scorer.db'}")
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        for run_id, write in WRITERS.items():
            run = crud.create_run(session, config=stored_run_config(run_id, N), n_no_labels=0)
            for step, k in {**STEPS, 8: 1}.items():
                received = crud.Received(step, k, "lora", "0" * 64, "-", 0)
                crud.add_checkpoint(session, run=run, received=received)
            for step in STEPS:
                write(session, run_pk=run.id, step=step, values=expected(run_id, step))
        session.commit()
    yield sessions
    engine.dispose()


def test_both_insert_paths_store_every_value_and_null(loss_db):
    with loss_db() as session:
        for run_id in WRITERS:
            run = crud.get_run(session, run_id=run_id)
            for step in STEPS:
                rows = session.execute(
                    select(Loss.sample_index, Loss.loss)
                    .where(Loss.run_pk == run.id, Loss.step == step)
                    .order_by(Loss.sample_index)
                ).all()
                assert [tuple(r) for r in rows] == list(enumerate(expected(run_id, step)))


@pytest.mark.parametrize("run_id", WRITERS)
def test_both_loss_readers_give_the_stored_losses_nan_for_null(loss_db, run_id):
    with loss_db() as session:
        run = crud.get_run(session, run_id=run_id)
        for step in STEPS:
            want = np.array([np.nan if v is None else v for v in expected(run_id, step)])
            fast = crud.losses_at_sqlite(session, run=run, step=step)
            portable = crud.losses_at_portable(session, run=run, step=step)
            for got in (fast, portable, crud.losses_at(session, run=run, step=step)):
                assert got.dtype == np.float64
                np.testing.assert_array_equal(got, want)
        for read in (crud.losses_at_sqlite, crud.losses_at_portable):  # a step without rows
            assert np.isnan(read(session, run=run, step=8)).all()


@pytest.mark.parametrize("run_id", WRITERS)
def test_both_history_queries_give_each_scored_step_of_a_sample(loss_db, run_id):
    with loss_db() as session:
        run = crud.get_run(session, run_id=run_id)
        for index in range(N):
            want = [(step, k, expected(run_id, step)[index]) for step, k in STEPS.items()]
            fast = crud.sample_history_sqlite(session, run=run, sample_index=index)
            portable = crud.sample_history_portable(session, run=run, sample_index=index)
            assert fast == portable == want
            assert crud.sample_history(session, run=run, sample_index=index) == want
        assert crud.sample_history_portable(session, run=run, sample_index=N) == []


def test_partial_checkpoint_files_are_removed_at_start(tmp_path):
    from scorer_svc.storage.checkpoint_files import checkpoint_path, remove_partial_files

    done = checkpoint_path(tmp_path, "run-1", 2)
    done.parent.mkdir(parents=True)
    done.write_bytes(b"acknowledged")
    cut = done.with_suffix(".partial")
    cut.write_bytes(b"cut off")
    assert remove_partial_files(tmp_path) == [cut]
    assert done.exists() and not cut.exists()
    assert remove_partial_files(tmp_path / "empty") == []


def test_an_aborted_or_short_checkpoint_leaves_no_file(tmp_path):
    path = tmp_path / "step.safetensors"
    writer = CheckpointWriter(path, [("w", "float32", [4], 16)])
    writer.write(b"\0" * 8)
    with pytest.raises(ValueError, match="8 payload bytes written; the tensors declare 16"):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    writer = CheckpointWriter(path, [("w", "float32", [4], 16)])
    with pytest.raises(ValueError, match="more bytes"):
        writer.write(b"\0" * 20)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_losses_round_trip_through_the_backends_own_paths(database_url):
    """store_scores, losses_at and sample_history as the worker and the API use them, on each
    backend (SQLite: its fast paths; PostgreSQL: binary COPY and the packed read for the
    losses, tests/scorer_svc/storage/test_crud_postgres.py, the portable query for the history)."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        run = crud.create_run(session, config=stored_run_config("r", N), n_no_labels=0)
        for step, k in STEPS.items():
            received = crud.Received(step, k, "lora", "xxh3-128:" + "0" * 32, "-", 0)
            checkpoint = crud.add_checkpoint(session, run=run, received=received)
            losses = np.array([np.nan if v is None else v for v in expected("a", step)])
            crud.store_scores(session, checkpoint=checkpoint, losses=losses, window=None,
                              seconds=0.5)  # fmt: skip
    with sessions() as session:
        run = crud.get_run(session, run_id="r")
        for step in STEPS:
            want = np.array([np.nan if v is None else v for v in expected("a", step)])
            np.testing.assert_array_equal(crud.losses_at(session, run=run, step=step), want)
        for index in range(N):
            want_history = [(step, k, expected("a", step)[index]) for step, k in STEPS.items()]
            assert crud.sample_history(session, run=run, sample_index=index) == want_history
        assert crud.scored_steps(session, run=run) == sorted(STEPS)
    engine.dispose()


def test_copy_stores_the_same_bits_as_the_portable_insert_on_postgresql(postgres_cluster):
    engine = make_engine(postgres_cluster.url())
    sessions = make_sessionmaker(engine)
    values = [0.1, None, 1e-308, 5e-324, 123456.789, 2.0 / 3.0, None, 1e300]
    with sessions() as session:
        for run_id, write in (
            ("copy", crud.insert_losses_copy),
            ("rows", crud.insert_losses_portable),
        ):
            run = crud.create_run(session, config=stored_run_config(run_id, len(values)),
                                  n_no_labels=0)  # fmt: skip
            write(session, run_pk=run.id, step=2**40, values=values)
        session.commit()
    with sessions() as session:
        for run_id in ("copy", "rows"):
            run = crud.get_run(session, run_id=run_id)
            rows = session.execute(
                select(Loss.sample_index, Loss.loss)
                .where(Loss.run_pk == run.id, Loss.step == 2**40)
                .order_by(Loss.sample_index)
            ).all()
            assert [tuple(r) for r in rows] == list(enumerate(values)), run_id
        assert crud._is_psycopg(session)  # the writer the worker uses there
    engine.dispose()
