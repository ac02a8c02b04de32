"""PostgreSQL's queries for the losses (binary COPY in, one packed bytea out, through psycopg 3:
scorer_svc.storage.engines.PsycopgQueries) against the reference ORM queries
(tests/support/reference_queries.py) on the same server: the same rows, the same bits, in the
session's transaction."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import engines
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.engines import PSYCOPG, PsycopgQueries, queries_of
from scorer_svc.storage.tables import Loss, Run
from tests.support import reference_queries as reference
from tests.support.scorer import stored_run_config

# Every kind of float64 a loss may be, and NULL: subnormals, -0.0, huge, inexact decimals;
# an infinity and a NaN given as values (store_scores gives None for them, but a writer must
# store what it is given, as the row insert does).
VALUES: list[float | None] = [
    0.1, None, 1e-308, 5e-324, -0.0, 123456.789, 2.0 / 3.0, None, 1e300, -2.5,
    math.inf, math.nan, 0.0, None,
]  # fmt: skip
STEP = 2**40  # a bigint step


def bits(value: float | None) -> bytes | None:
    return None if value is None else struct.pack(">d", value)


def stored(session, run_pk: int, step: int) -> list[tuple[int, bytes | None]]:
    """A step's rows as the ORM reads them: (sample_index, the loss's 8 bytes or None)."""
    rows = session.execute(
        select(Loss.sample_index, Loss.loss)
        .where(Loss.run_pk == run_pk, Loss.step == step)
        .order_by(Loss.sample_index)
    ).all()
    return [(i, bits(v)) for i, v in rows]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float64 and np.array_equal(a.view(np.uint64), b.view(np.uint64))


@pytest.fixture
def sessions(postgres_cluster):
    engine = make_engine(postgres_cluster.url())
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    yield make_sessionmaker(engine)
    engine.dispose()


def new_run(session, run_id: str, n: int):
    return run_store.create_run(session, config=stored_run_config(run_id, n), n_no_labels=0)


def test_binary_copy_stores_the_same_rows_and_bits_as_the_row_insert(sessions):
    with sessions() as session:
        copied, inserted = (
            new_run(session, "copy", len(VALUES)),
            new_run(session, "rows", len(VALUES)),
        )
        PSYCOPG.insert_losses(session, run_pk=copied.id, step=STEP, values=VALUES)
        reference.insert_losses(session, run_pk=inserted.id, step=STEP, values=VALUES)
        PSYCOPG.insert_losses(session, run_pk=copied.id, step=3, values=[])  # no rows at all
        session.commit()
    with sessions() as session:
        want = [(i, bits(v)) for i, v in enumerate(VALUES)]
        assert stored(session, inserted.id, STEP) == want
        assert stored(session, copied.id, STEP) == want
        assert stored(session, copied.id, 3) == []


def test_binary_copy_of_a_numpy_vector_in_pieces(sessions, monkeypatch):
    """A stream longer than one write (pieces that cut rows in two) and a float64 array as
    values: a NaN there is a value, as the row insert stores it."""
    monkeypatch.setattr(engines, "_COPY_CHUNK_BYTES", 1000)
    losses = np.random.default_rng(0).random(3001) * 3
    losses[[5, 700]] = np.nan
    with sessions() as session:
        run = new_run(session, "pieces", len(losses))
        PSYCOPG.insert_losses(session, run_pk=run.id, step=1, values=losses)  # type: ignore[arg-type]
        nulls = [None if i % 3 == 0 else float(v) for i, v in enumerate(losses)]
        PSYCOPG.insert_losses(session, run_pk=run.id, step=2, values=nulls)
        session.commit()
        assert stored(session, run.id, 1) == [(i, bits(float(v))) for i, v in enumerate(losses)]
        assert stored(session, run.id, 2) == [(i, bits(v)) for i, v in enumerate(nulls)]


@pytest.fixture
def two_runs(sessions):
    """Runs "a" and "b" with rows at steps 1 and 2 (different values each), samples without a
    row in "a" (gaps, and none past index 9 of its 12), a step without rows, NULLs."""
    rng = np.random.default_rng(1)
    with sessions() as session:
        a, b = new_run(session, "a", 12), new_run(session, "b", 10)
        for k, run in enumerate((a, b)):
            for step in (1, 2):
                values = [None if (i + step + k) % 4 == 0 else float(v)
                          for i, v in enumerate(rng.random(10))]  # fmt: skip
                reference.insert_losses(session, run_pk=run.id, step=step, values=values)
        session.execute(delete(Loss).where(Loss.run_pk == a.id, Loss.sample_index.in_([0, 4, 5])))
        session.commit()
    return sessions


@pytest.mark.parametrize("run_id", ["a", "b"])
def test_the_packed_read_gives_the_reference_reads_bits(two_runs, run_id):
    with two_runs() as session:
        run = run_store.get_run(session, run_id=run_id)
        others = [
            (other, s)
            for other in session.scalars(select(Run)).all()
            for s in (1, 2)
            if (other.id, s) != (run.id, 1)
        ]
        assert len(others) == 3
        for step in (1, 2, 7):
            fast = PSYCOPG.losses_at(session, run=run, step=step)
            want_read = reference.losses_at(session, run=run, step=step)
            assert fast.shape == (run.n_samples,) and same_bits(fast, want_read), step
            assert same_bits(loss_store.losses_at(session, run=run, step=step), want_read)
            want = np.full(run.n_samples, np.nan)
            for i, value in stored(session, run.id, step):
                if value is not None:
                    want[i] = struct.unpack(">d", value)[0]
            assert same_bits(fast, want)
        assert np.isnan(PSYCOPG.losses_at(session, run=run, step=7)).all()
        # the read is of its run and step only: every other (run, step) holds other values
        mine = PSYCOPG.losses_at(session, run=run, step=1)
        for other_run, other_step in others:
            other = reference.losses_at(session, run=other_run, step=other_step)
            n = min(len(mine), len(other))
            assert not np.array_equal(mine[:n], other[:n], equal_nan=True)
        if run_id == "a":  # samples without a row: NaN, as for NULL
            assert np.isnan(mine[[0, 4, 5, 10, 11]]).all()


def test_store_scores_and_losses_at_take_the_psycopg_queries_in_the_sessions_transaction(
    sessions, monkeypatch
):
    taken: list[str] = []

    def spied(name: str):
        real = getattr(PsycopgQueries, name)

        def spy(self, *args, **kwargs):
            taken.append(name)
            return real(self, *args, **kwargs)

        return spy

    for name in ("insert_losses", "losses_at"):
        monkeypatch.setattr(PsycopgQueries, name, spied(name))
    losses = np.random.default_rng(2).random(1000)
    losses[[3, 999]] = [np.nan, np.inf]  # not finite: stored as NULL
    with sessions() as session:
        assert queries_of(session) is PSYCOPG
        run = new_run(session, "r", len(losses))
        for step in (1, 2):
            received = checkpoint_store.Received(step, step, "lora", "xxh3-128:" + "0" * 32, "-", 0)
            checkpoint_store.add_checkpoint(session, run=run, received=received)
        # rows written and not committed are read back in the same transaction, and gone
        # with it when it rolls back
        loss_store.insert_losses(session, run_pk=run.id, step=2, values=losses.tolist())
        assert same_bits(loss_store.losses_at(session, run=run, step=2), losses)
        session.rollback()
        assert np.isnan(loss_store.losses_at(session, run=run, step=2)).all()
        checkpoint = checkpoint_store.get_checkpoint(session, run=run, step=1)
        checkpoint_store.store_scores(
            session, checkpoint=checkpoint, losses=losses, window=None, seconds=1
        )
    with sessions() as session:
        run = run_store.get_run(session, run_id="r")
        want = np.where(np.isfinite(losses), losses, np.nan)
        assert same_bits(loss_store.losses_at(session, run=run, step=1), want)
        assert reference.count_null_at(session, run=run, step=1) == 2
        assert session.scalar(select(func.count()).select_from(Loss)) == len(losses)
    assert taken == ["insert_losses", "losses_at", "losses_at", "insert_losses", "losses_at"]


def test_copy_stores_the_same_bits_as_the_reference_insert(sessions):
    values = [0.1, None, 1e-308, 5e-324, 123456.789, 2.0 / 3.0, None, 1e300]
    with sessions() as session:
        for run_id, write in (("copy", PSYCOPG.insert_losses), ("rows", reference.insert_losses)):
            run = new_run(session, run_id, len(values))
            write(session, run_pk=run.id, step=2**40, values=values)
        session.commit()
    with sessions() as session:
        for run_id in ("copy", "rows"):
            run = run_store.get_run(session, run_id=run_id)
            assert stored(session, run.id, 2**40) == [(i, bits(v)) for i, v in enumerate(values)]
