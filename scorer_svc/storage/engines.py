"""What each supported database engine does its own way: the losses written and read through
the driver (SQLite: a plain executemany and a raw cursor; PostgreSQL through psycopg 3: binary
COPY and one packed bytea), a sample's history, a run's lock, the metrics' upsert.
scorer_svc.storage.db picks one implementation from the engine's dialect when the engine is
made, and every session of its sessionmaker carries it (queries_of); the table modules call
it, never asking the dialect."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from scorer_svc.storage.tables import CheckpointRow, Loss, MetricRow, Run

# Where a session of scorer_svc.storage.db.make_sessionmaker holds its engine's queries
QUERIES_KEY = "engine_queries"


class EngineQueries(Protocol):
    """The queries whose fastest form depends on the database and its driver; every one
    works in the session's transaction."""

    name: str  # the engine as its URL names it (dialect+driver)

    def lock_run(self, session: Session, *, run_pk: int) -> None:
        """The run's row locked until the transaction ends (deleting a run)."""

    def insert_losses(
        self,
        session: Session,
        *,
        run_pk: int,
        step: int,
        values: Sequence[float | None],
        indices: np.ndarray | None = None,
    ) -> None:
        """One checkpoint's rows: values[j] is the loss of sample indices[j] (of sample j
        without indices), None for NULL."""

    def losses_at(self, session: Session, *, run: Run, step: int) -> np.ndarray:
        """The N losses at a step as float64, NaN where NULL or without a row."""

    def sample_history(self, session: Session, *, run: Run, sample_index: int) -> list[tuple]:
        """(step, update_index, loss) of one sample at every scored checkpoint, by step."""

    def sample_history_rows(
        self, session: Session, *, run: Run, sample_indices: Sequence[int]
    ) -> Iterable[tuple]:
        """(sample_index, step, update_index, loss) of each of a few samples, by sample then
        step."""

    def upsert_metrics(self, session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
        """The metrics rows (run_pk, key, step, value, logged_at), each replacing the row at
        its run, key and step: one statement, so two writers of the same points never
        collide."""


def queries_of(session: Session) -> EngineQueries:
    """The queries of the engine the session's sessionmaker was made for."""
    try:
        return session.info[QUERIES_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "this session has no engine queries: make its sessionmaker with "
            "scorer_svc.storage.db.make_sessionmaker"
        ) from None


def _sample_indices(n: int, indices: np.ndarray | None) -> np.ndarray:
    return np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)


def _driver_cursor(session: Session, **options: object) -> Any:
    """A cursor of the driver's own connection that the session holds, in its transaction."""
    return session.connection().connection.dbapi_connection.cursor(**options)  # type: ignore[union-attr]


@contextmanager
def _driver_errors(session: Session, statement: str) -> Iterator[None]:
    """The driver's errors raised by work on its own cursor, as SQLAlchemy raises them for its
    statements (a DBAPIError subclass, the driver's error as orig): a connection the driver
    lost is invalidated, so that the pool replaces it, and says connection_invalidated."""
    connection = session.connection()
    dialect = connection.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as error:
        lost = dialect.is_disconnect(error, connection.connection.dbapi_connection, None)
        if lost:
            connection.invalidate(error)
        raise DBAPIError.instance(
            statement, None, error, dbapi_error, connection_invalidated=lost, dialect=dialect
        ) from error


# SQLite


class SqliteQueries:
    """SQLite through Python's sqlite3 (pysqlite)."""

    name = "sqlite+pysqlite"

    def upsert_metrics(self, session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
        _upsert_metrics(session, sqlite_insert(MetricRow), rows)

    def lock_run(self, session: Session, *, run_pk: int) -> None:
        """SQLite has no row locks: the first write takes the database's one write lock."""
        session.execute(update(Run).where(Run.id == run_pk).values(instance=Run.instance))

    def insert_losses(
        self,
        session: Session,
        *,
        run_pk: int,
        step: int,
        values: Sequence[float | None],
        indices: np.ndarray | None = None,
    ) -> None:
        """A plain executemany of tuples through the driver: the ORM's per-row dictionaries
        made N = 200,000 take 1.7 s, this takes about 0.45 s."""
        session.connection().exec_driver_sql(
            "INSERT INTO losses (run_pk, step, sample_index, loss) VALUES (?, ?, ?, ?)",
            [
                (run_pk, step, i, v)
                for i, v in zip(_sample_indices(len(values), indices).tolist(), values, strict=True)
            ],
        )

    def losses_at(self, session: Session, *, run: Run, step: int) -> np.ndarray:
        """Read straight from the driver's cursor into numpy (no Row objects): NULL comes back
        as +inf (9e999), which no stored loss can be, since only finite losses are stored."""
        statement = (
            "SELECT sample_index, coalesce(loss, 9e999) FROM losses "
            "WHERE run_pk = ? AND step = ? ORDER BY sample_index"
        )
        with _driver_errors(session, statement), closing(_driver_cursor(session)) as cursor:
            cursor.execute(statement, (run.id, step))
            rows = np.fromiter(
                iter(cursor.fetchall()), dtype=np.dtype([("i", "<i8"), ("v", "<f8")])
            )
        out = np.full(run.n_samples, np.nan)
        values = rows["v"]
        values[np.isinf(values)] = np.nan
        out[rows["i"]] = values
        return out

    def sample_history(self, session: Session, *, run: Run, sample_index: int) -> list[tuple]:
        """Without statistics SQLite scans the run's whole primary-key range (every loss of
        every step: 0.5 s at 50 checkpoints x 200,000) instead of the per-sample index: named
        here."""
        return [
            tuple(row)
            for row in session.connection().exec_driver_sql(
                "SELECT l.step, c.update_index, l.loss FROM losses AS l "
                "INDEXED BY ix_losses_sample "
                "JOIN checkpoints AS c ON c.run_pk = l.run_pk AND c.step = l.step "
                "WHERE l.run_pk = ? AND l.sample_index = ? ORDER BY l.step",
                (run.id, sample_index),
            )
        ]

    def sample_history_rows(
        self, session: Session, *, run: Run, sample_indices: Sequence[int]
    ) -> Iterable[tuple]:
        """The per-sample index named, as in sample_history."""
        marks = ",".join("?" * len(sample_indices))
        return session.connection().exec_driver_sql(  # type: ignore[no-any-return]
            "SELECT l.sample_index, l.step, c.update_index, l.loss FROM losses AS l "
            "INDEXED BY ix_losses_sample "
            "JOIN checkpoints AS c ON c.run_pk = l.run_pk AND c.step = l.step "
            f"WHERE l.run_pk = ? AND l.sample_index IN ({marks}) "
            "ORDER BY l.sample_index, l.step",
            (run.id, *sample_indices),
        )


# PostgreSQL through psycopg 3

# PostgreSQL's binary COPY format (the COPY page of its manual, "Binary Format"): a header, then
# per row a 16-bit field count and each field as its 32-bit byte length (-1 for NULL, no bytes
# then) and its value, big-endian, in the column's own type (binary COPY converts nothing: a
# wrong width is refused); then a 16-bit -1.
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension
_PGCOPY_TRAILER = b"\xff\xff"
_LOSS_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("run_pk_length", ">i4"),
        ("run_pk", ">i4"),  # integer
        ("step_length", ">i4"),
        ("step", ">i8"),  # bigint (migration 0002)
        ("sample_index_length", ">i4"),
        ("sample_index", ">i4"),  # integer
        ("loss_length", ">i4"),
        ("loss", ">f8"),  # double precision; a NULL's 8 bytes are left out of the stream
    ]
)
_COPY_CHUNK_BYTES = 1 << 24  # libpq takes at most 2 GiB per write

# A row of PsycopgQueries.losses_at's answer: int4send(sample_index) || float8send(loss).
_INDEX_AND_LOSS = np.dtype([("sample_index", ">i4"), ("loss", ">f8")])


def _losses_and_nulls(values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """values as float64 (NaN where None) and where they are None: a NaN given as a value
    stays a value, as the row insert stores it."""
    losses = np.array(values, dtype=np.float64)  # None becomes NaN
    null = np.isnan(losses)
    for i in np.flatnonzero(null).tolist():  # the NULLs are few (samples without labels)
        null[i] = values[i] is None
    return losses, null


def _upsert_metrics(session: Session, insert: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (run_pk, key, step) DO UPDATE, as SQLite and PostgreSQL both
    spell it."""
    if not rows:
        return
    statement = insert.values(list(rows))
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["run_pk", "key", "step"],
            set_={"value": statement.excluded.value, "logged_at": statement.excluded.logged_at},
        )
    )


class PsycopgQueries:
    """PostgreSQL through psycopg 3."""

    name = "postgresql+psycopg"

    def upsert_metrics(self, session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
        _upsert_metrics(session, postgresql_insert(MetricRow), rows)

    def lock_run(self, session: Session, *, run_pk: int) -> None:
        session.execute(select(Run.id).where(Run.id == run_pk).with_for_update())

    def insert_losses(
        self,
        session: Session,
        *,
        run_pk: int,
        step: int,
        values: Sequence[float | None],
        indices: np.ndarray | None = None,
    ) -> None:
        """PostgreSQL's binary COPY through psycopg 3, in the session's transaction: numpy
        lays every row out in one buffer (the float64 bits as they are), the server takes
        them without parsing text. N = 200,000 (2 cores, shared): about 0.04 s to build the
        buffer where the text COPY took 0.15 s to format (repr of every float), and the
        server's share 0.07 s less; the rest is the server's (heap, the two indexes, the
        WAL). store_scores in bench/storage.py (fsync on, 50 checkpoints): median 0.85 s, the
        text COPY 2.0 s with the run's foreign key checked row by row (1.5 s with this COPY;
        migration 0004 dropped it)."""
        losses, null = _losses_and_nulls(values)
        n = len(losses)
        rows = np.empty(n, _LOSS_ROW)
        rows["fields"] = 4
        rows["run_pk_length"], rows["run_pk"] = 4, run_pk
        rows["step_length"], rows["step"] = 8, step
        rows["sample_index_length"], rows["sample_index"] = 4, _sample_indices(n, indices)
        rows["loss_length"] = np.where(null, -1, 8)
        rows["loss"] = losses
        stream = rows.view(np.uint8)
        if null.any():  # a NULL has a length of -1 and no value bytes
            keep = np.ones((n, _LOSS_ROW.itemsize), dtype=bool)
            keep[null, -_LOSS_ROW["loss"].itemsize :] = False
            stream = stream[keep.reshape(-1)]
        with (
            _driver_errors(session, "COPY losses FROM STDIN"),
            _driver_cursor(session) as cursor,
            cursor.copy(
                "COPY losses (run_pk, step, sample_index, loss) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(_PGCOPY_HEADER)
            for start in range(0, len(stream), _COPY_CHUNK_BYTES):
                copy.write(stream[start : start + _COPY_CHUNK_BYTES].data)
            copy.write(_PGCOPY_TRAILER)

    def losses_at(self, session: Session, *, run: Run, step: int) -> np.ndarray:
        """One row, one value: the server packs each row's sample index and loss as their
        binary send forms (big-endian int4 and float8, the float's bits as stored) into one
        bytea, which psycopg 3 hands over as bytes (a binary cursor) and numpy reads in
        place. A NULL loss makes its row's piece NULL, which string_agg leaves out: that
        sample stays NaN, as do samples without a row. The rows come in any order; each
        lands at its index. N = 200,000 (2 cores, shared): about 0.04 s, the ORM's rows took
        0.57-1.0 s."""
        statement = (
            "SELECT string_agg(int4send(sample_index) || float8send(loss), '') FROM losses "
            "WHERE run_pk = %s AND step = %s"
        )
        with _driver_errors(session, statement), _driver_cursor(session, binary=True) as cursor:
            cursor.execute(statement, (run.id, step))
            row = cursor.fetchone()
        out = np.full(run.n_samples, np.nan)
        if row is not None and row[0] is not None:
            rows = np.frombuffer(row[0], dtype=_INDEX_AND_LOSS)
            out[rows["sample_index"]] = rows["loss"]
        return out

    def sample_history(self, session: Session, *, run: Run, sample_index: int) -> list[tuple]:
        return [
            tuple(row)
            for row in session.execute(
                select(Loss.step, CheckpointRow.update_index, Loss.loss)
                .join(
                    CheckpointRow,
                    (CheckpointRow.run_pk == Loss.run_pk) & (CheckpointRow.step == Loss.step),
                )
                .where(Loss.run_pk == run.id, Loss.sample_index == sample_index)
                .order_by(Loss.step)
            )
        ]

    def sample_history_rows(
        self, session: Session, *, run: Run, sample_indices: Sequence[int]
    ) -> Iterable[tuple]:
        return session.execute(  # type: ignore[return-value]
            select(Loss.sample_index, Loss.step, CheckpointRow.update_index, Loss.loss)
            .join(
                CheckpointRow,
                (CheckpointRow.run_pk == Loss.run_pk) & (CheckpointRow.step == Loss.step),
            )
            .where(Loss.run_pk == run.id, Loss.sample_index.in_(sample_indices))
            .order_by(Loss.sample_index, Loss.step)
        )


SQLITE: EngineQueries = SqliteQueries()
PSYCOPG: EngineQueries = PsycopgQueries()
# (dialect name, driver name) -> its queries: the engines the scorer supports
SUPPORTED: dict[tuple[str, str], EngineQueries] = {
    ("sqlite", "pysqlite"): SQLITE,
    ("postgresql", "psycopg"): PSYCOPG,
}
