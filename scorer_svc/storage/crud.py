"""Data access: every query the services and routes need, keyword-only, no SQL elsewhere."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from common.budget import Estimates
from common.selection import Window
from scorer_svc.storage.tables import (
    FAILED,
    PENDING,
    RECEIVED,
    SCORED,
    SCORING,
    SUPERSEDED,
    CheckpointRow,
    EstimateRow,
    Loss,
    Run,
    WindowRow,
)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# runs


def get_run(session: Session, *, run_id: str) -> Run | None:
    return session.scalar(select(Run).where(Run.run_id == run_id))


def list_runs(
    session: Session, *, limit: int | None = None, from_id: int | None = None
) -> Sequence[Run]:
    """Runs in the order they were registered; from_id: from that row id on (a page's start)."""
    query = select(Run).order_by(Run.id).limit(limit)
    if from_id is not None:
        query = query.where(Run.id >= from_id)
    return session.scalars(query).all()


@dataclass(frozen=True)
class RunProgress:
    """What a run's checkpoints say of it."""

    n_checkpoints: int = 0
    last_step: int | None = None  # the latest checkpoint received
    last_scored_step: int | None = None


def run_progress(session: Session, *, runs: Sequence[Run]) -> dict[int, RunProgress]:
    """RunProgress of each run (by row id) in one query; runs with no checkpoint are left out."""
    if not runs:
        return {}
    scored_step = case((CheckpointRow.status == SCORED, CheckpointRow.step))
    rows = session.execute(
        select(
            CheckpointRow.run_pk,
            func.count(),
            func.max(CheckpointRow.step),
            func.max(scored_step),
        )
        .where(CheckpointRow.run_pk.in_([run.id for run in runs]))
        .group_by(CheckpointRow.run_pk)
    ).all()
    return {pk: RunProgress(int(n), last, scored) for pk, n, last, scored in rows}


def end_run(session: Session, *, run: Run, status: str, detail: str | None) -> None:
    """Records how the run ended, as its trainer reports it (again: the last report stands)."""
    run.end_status = status
    run.end_detail = detail
    run.ended_at = now()
    session.commit()


def reopen_run(session: Session, *, run: Run, settings: dict[str, Any] | None = None) -> None:
    """A resumed run is training again: its recorded end, if any, no longer holds. settings:
    hello keys a resume may change (how it draws, its scoring budget), stored with it."""
    changed = {k: v for k, v in (settings or {}).items() if run.config.get(k) != v}
    if run.end_status is None and run.ended_at is None and not changed:
        return  # nothing to write: a read-mostly database sees no write
    run.end_status = run.end_detail = run.ended_at = None
    if changed:
        run.config = {**run.config, **changed}
    session.commit()


def create_run(
    session: Session, *, config: dict, n_no_labels: int, instance: str | None = None
) -> Run:
    """instance: the scorer registering it (None: no scorer's yet; the next to start takes it)."""
    run = Run(
        run_id=config["run_id"],
        instance=instance,
        base_model=config["base_model"],
        finetuning_type=config["finetuning_type"],
        config=config,
        fingerprint=config["fingerprint"],
        n_samples=config["n_samples"],
        n_no_labels=n_no_labels,
        window_size=config["window_size"],
        update_times=config["update_times"],
        created_at=now(),
    )
    session.add(run)
    session.commit()
    return run


def adopt_unowned_runs(session: Session, *, instance: str) -> int:
    """Runs that name no scorer (made before runs named one) become this instance's; how many."""
    unowned = select(func.count()).select_from(Run).where(Run.instance.is_(None))
    if not session.scalar(unowned):  # no write at all: a read-only database starts as well
        return 0
    done = session.execute(update(Run).where(Run.instance.is_(None)).values(instance=instance))
    session.commit()
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RemovedRun:
    """What deleting a run took out of the database; its checkpoint files are the caller's."""

    checkpoints: int
    losses: int
    paths: list[str]


def delete_run(session: Session, *, run: Run, keep_pending: bool = True) -> RemovedRun | None:
    """Every row of a run (losses, windows, checkpoints, the run) in one transaction, or None,
    with nothing deleted, when keep_pending and a checkpoint of it is queued or being scored.
    The run's row and its checkpoints' rows are locked before they are read, so the check and
    the deletes see the same checkpoints: a checkpoint added or sent again meanwhile waits,
    then fails (its trainer is told, nothing is acknowledged). PostgreSQL locks the rows;
    on SQLite the first write takes the database's one write lock."""
    if _is_sqlite(session):
        session.execute(update(Run).where(Run.id == run.id).values(instance=Run.instance))
    else:
        session.execute(select(Run.id).where(Run.id == run.id).with_for_update())
    checkpoints = session.execute(
        select(CheckpointRow.status, CheckpointRow.path)
        .where(CheckpointRow.run_pk == run.id)
        .with_for_update()
    ).all()
    if keep_pending and any(status in PENDING for status, _ in checkpoints):
        session.rollback()
        return None
    losses = session.execute(delete(Loss).where(Loss.run_pk == run.id)).rowcount  # type: ignore[attr-defined]
    session.execute(delete(WindowRow).where(WindowRow.run_pk == run.id))
    session.execute(delete(EstimateRow).where(EstimateRow.run_pk == run.id))
    session.execute(delete(CheckpointRow).where(CheckpointRow.run_pk == run.id))
    session.execute(delete(Run).where(Run.id == run.id))
    session.commit()
    return RemovedRun(len(checkpoints), int(losses or 0), [path for _, path in checkpoints])


# checkpoints


def get_checkpoint(session: Session, *, run: Run, step: int) -> CheckpointRow | None:
    return session.scalar(
        select(CheckpointRow).where(CheckpointRow.run_pk == run.id, CheckpointRow.step == step)
    )


def list_checkpoints(
    session: Session, *, run: Run, from_step: int | None = None, limit: int | None = None
) -> Sequence[CheckpointRow]:
    """A run's checkpoints by step; from_step: from that step on (a page's start)."""
    query = select(CheckpointRow).where(CheckpointRow.run_pk == run.id)
    if from_step is not None:
        query = query.where(CheckpointRow.step >= from_step)
    return session.scalars(query.order_by(CheckpointRow.step).limit(limit)).all()


def scored_steps(session: Session, *, run: Run) -> list[int]:
    return list(
        session.scalars(
            select(CheckpointRow.step)
            .where(CheckpointRow.run_pk == run.id, CheckpointRow.status == SCORED)
            .order_by(CheckpointRow.step)
        )
    )


def latest_scored(session: Session, *, run: Run) -> CheckpointRow | None:
    return session.scalar(
        select(CheckpointRow)
        .where(CheckpointRow.run_pk == run.id, CheckpointRow.status == SCORED)
        .order_by(CheckpointRow.step.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class Received:
    """A checkpoint the intake has stored: what its row records of it."""

    step: int
    update_index: int
    kind: str
    digest: str
    path: str
    n_bytes: int


def add_checkpoint(session: Session, *, run: Run, received: Received) -> CheckpointRow:
    checkpoint = CheckpointRow(
        run_pk=run.id, **asdict(received), status=RECEIVED, received_at=now()
    )
    session.add(checkpoint)
    if received.update_index == 1 and run.initial_step is None:
        run.initial_step = received.step
    session.commit()
    return checkpoint


def requeue(session: Session, *, checkpoint: CheckpointRow, received: Received) -> None:
    """A failed checkpoint sent again: pending once more, with the new tensors."""
    for name, value in asdict(received).items():
        setattr(checkpoint, name, value)
    checkpoint.status = RECEIVED
    checkpoint.received_at = now()
    checkpoint.started_at = checkpoint.finished_at = None
    checkpoint.error = None
    session.commit()


def supersede(session: Session, *, run: Run) -> list[str]:
    """An async run's checkpoints that wait (received) while a newer one of it waits, is
    scored or is being scored: marked superseded, never to be scored; the paths of their
    tensors, to remove. The initial checkpoint is never superseded: every window needs its
    losses. One conditional UPDATE: a checkpoint the worker claims meanwhile is scoring and
    stays so (UPDATE ... RETURNING: SQLite 3.35 and PostgreSQL)."""
    newest = (
        select(func.max(CheckpointRow.step))
        .where(CheckpointRow.run_pk == run.id, CheckpointRow.status.in_((*PENDING, SCORED)))
        .scalar_subquery()
    )
    stale = [
        CheckpointRow.run_pk == run.id,
        CheckpointRow.status == RECEIVED,
        CheckpointRow.step < newest,
    ]
    if run.initial_step is not None:
        stale.append(CheckpointRow.step != run.initial_step)
    paths = session.scalars(
        update(CheckpointRow)
        .where(*stale)
        .values(status=SUPERSEDED, finished_at=now())
        .returning(CheckpointRow.path)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return list(paths)


def async_runs(session: Session, *, instance: str) -> list[Run]:
    """This instance's runs with checkpoints waiting, whose trainers draw asynchronously."""
    runs = session.scalars(
        select(Run)
        .where(Run.instance == instance)
        .where(Run.id.in_(select(CheckpointRow.run_pk).where(CheckpointRow.status == RECEIVED)))
    ).all()
    return [run for run in runs if run.is_async]


def count_checkpoints(session: Session, *, instance: str | None) -> dict[str, int]:
    """How many checkpoints have each status: this instance's runs' (every run's for None)."""
    query = select(CheckpointRow.status, func.count()).join(Run, Run.id == CheckpointRow.run_pk)
    if instance is not None:
        query = query.where(Run.instance == instance)
    return {
        str(status): int(n) for status, n in session.execute(query.group_by(CheckpointRow.status))
    }


def pending(
    session: Session, *, instance: str, skip: Collection[int] = ()
) -> list[tuple[int, int]]:
    """(checkpoint id, run pk) of this instance's checkpoints acknowledged but not scored
    (including any cut off mid-scoring), oldest first, other than those in skip."""
    query = (
        select(CheckpointRow.id, CheckpointRow.run_pk)
        .join(Run, Run.id == CheckpointRow.run_pk)
        .where(CheckpointRow.status.in_(PENDING), Run.instance == instance)
    )
    if skip:
        query = query.where(CheckpointRow.id.not_in(list(skip)))
    return [(int(i), int(r)) for i, r in session.execute(query.order_by(CheckpointRow.id))]


def claim(session: Session, *, checkpoint_id: int, instance: str) -> CheckpointRow | None:
    """Take a checkpoint of this instance's runs that waits to be scored (received): it is
    marked scoring and returned, or None when it no longer waits or is not this instance's.
    One conditional UPDATE: of two claims of the same checkpoint, one changes the row."""
    owned = select(Run.id).where(Run.instance == instance)
    done = session.execute(
        update(CheckpointRow)
        .where(
            CheckpointRow.id == checkpoint_id,
            CheckpointRow.status == RECEIVED,
            CheckpointRow.run_pk.in_(owned),
        )
        .values(status=SCORING, started_at=now(), error=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not done.rowcount:  # type: ignore[attr-defined]
        return None
    return session.get(CheckpointRow, checkpoint_id, populate_existing=True)


def release_cut_off(session: Session, *, instance: str) -> int:
    """This instance's checkpoints left `scoring` by a process of it that stopped: waiting
    again (received), to be claimed and scored afresh; how many. Only the one live process of
    an instance (scorer_svc.storage.instance.InstanceLock) may call it, while it scores
    nothing: before it claims anything, or after an outage left a claim or a store of its
    unanswered."""
    cut_off = (
        select(CheckpointRow.id)
        .join(Run, Run.id == CheckpointRow.run_pk)
        .where(CheckpointRow.status == SCORING, Run.instance == instance)
    )
    ids = list(session.scalars(cut_off))
    if not ids:  # no write at all: a read-only database serves as well
        return 0
    session.execute(
        update(CheckpointRow)
        .where(CheckpointRow.id.in_(ids), CheckpointRow.status == SCORING)
        .values(status=RECEIVED, started_at=None)
    )
    session.commit()
    return len(ids)


def mark_scoring(session: Session, *, checkpoint: CheckpointRow) -> None:
    checkpoint.status = SCORING
    checkpoint.started_at = now()
    checkpoint.error = None
    session.commit()


def mark_received(session: Session, *, checkpoint_id: int) -> bool:
    """A checkpoint being scored waits again (received), to be scored afresh; whether it was
    still being scored (one whose losses are stored, or gone, is left as it is)."""
    done = session.execute(
        update(CheckpointRow)
        .where(CheckpointRow.id == checkpoint_id, CheckpointRow.status == SCORING)
        .values(status=RECEIVED, started_at=None)
    )
    session.commit()
    return bool(done.rowcount)  # type: ignore[attr-defined]


def mark_failed(session: Session, *, checkpoint_id: int, error: str) -> bool:
    """A checkpoint still waiting or being scored failed (error); whether it was. One scored
    meanwhile keeps its losses (a store whose answer was lost with its connection may have
    been committed), and one gone stays gone."""
    done = session.execute(
        update(CheckpointRow)
        .where(CheckpointRow.id == checkpoint_id, CheckpointRow.status.in_(PENDING))
        .values(status=FAILED, error=error, finished_at=now())
    )
    session.commit()
    return bool(done.rowcount)  # type: ignore[attr-defined]


class CheckpointGone(LookupError):
    """The checkpoint whose scores are stored no longer waits for them (deleted with its run)."""


def store_scores(
    session: Session,
    *,
    checkpoint: CheckpointRow,
    losses: np.ndarray,
    window: Window | None,
    seconds: float,
    measured: np.ndarray | None = None,
    estimates: Estimates | None = None,
) -> None:
    """A checkpoint's losses, its window and its status, in one transaction; raises
    CheckpointGone, storing nothing, when the checkpoint no longer waits for its scores (its
    run was deleted meanwhile). measured: the samples it measured (indices; None: all), the
    only ones whose losses are stored; estimates: what ranked its samples under a budget."""
    stored = losses if measured is None else losses[measured]
    values = _nullable(stored)
    budgeted = estimates is not None and measured is not None
    scored = session.execute(
        update(CheckpointRow)
        .where(CheckpointRow.id == checkpoint.id, CheckpointRow.status.in_(PENDING))
        .values(
            status=SCORED,
            finished_at=now(),
            score_seconds=seconds,
            samples_per_second=len(values) / seconds if seconds > 0 else None,
            n_null=int(np.count_nonzero(~np.isfinite(stored))),
            error=None,
            n_measured=len(values) if budgeted else None,
            mean_age=estimates.mean_age() if budgeted and estimates is not None else None,
        )
        .execution_options(synchronize_session=False)
    )
    if scored.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise CheckpointGone(f"checkpoint {checkpoint.id} no longer waits for its scores")
    if values:
        insert_losses(
            session, run_pk=checkpoint.run_pk, step=checkpoint.step, values=values, indices=measured
        )
    if estimates is not None:
        session.add(
            EstimateRow(
                run_pk=checkpoint.run_pk,
                step=checkpoint.step,
                delta=estimates.delta.astype("<f8").tobytes(),
                age=estimates.age.astype("<i4").tobytes(),
            )
        )
    if window is not None:
        session.add(
            WindowRow(
                run_pk=checkpoint.run_pk,
                step=checkpoint.step,
                update_index=window.update_index,
                t=window.t,
                T=window.T,
                u=window.u,
                start=window.start,
                end=window.end,
                truncated_at=window.truncated_at,
                n_ranked=window.n_ranked,
            )
        )
    session.commit()


def _nullable(losses: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in losses.tolist()]


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _is_psycopg(session: Session) -> bool:
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


# Each query below has a fast path for SQLite (and one for PostgreSQL through psycopg 3 for the
# losses) and a portable one for any other database; all are public so that they can be
# compared on the same data.


def insert_losses(
    session: Session,
    *,
    run_pk: int,
    step: int,
    values: Sequence[float | None],
    indices: np.ndarray | None = None,
) -> None:
    """One checkpoint's rows: values[j] is the loss of sample indices[j] (of sample j without
    indices), None for NULL."""
    if _is_sqlite(session):
        write = insert_losses_sqlite
    elif _is_psycopg(session):
        write = insert_losses_copy
    else:
        write = insert_losses_portable
    write(session, run_pk=run_pk, step=step, values=values, indices=indices)


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


def insert_losses_copy(
    session: Session,
    *,
    run_pk: int,
    step: int,
    values: Sequence[float | None],
    indices: np.ndarray | None = None,
) -> None:
    """PostgreSQL's binary COPY through psycopg 3, in the session's transaction: numpy lays
    every row out in one buffer (the float64 bits as they are), the server takes them
    without parsing text. N = 200,000 (2 cores, shared): about 0.04 s to build the buffer
    where the text COPY took 0.15 s to format (repr of every float), and the server's share
    0.07 s less; the rest is the server's (heap, the two indexes, the WAL). store_scores in
    bench/storage.py (fsync on, 50 checkpoints): median 0.85 s, the text COPY 2.0 s with the
    run's foreign key checked row by row (1.5 s with this COPY; migration 0004 dropped it)."""
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


def _losses_and_nulls(values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """values as float64 (NaN where None) and where they are None: a NaN given as a value
    stays a value, as the row insert stores it."""
    losses = np.array(values, dtype=np.float64)  # None becomes NaN
    null = np.isnan(losses)
    for i in np.flatnonzero(null).tolist():  # the NULLs are few (samples without labels)
        null[i] = values[i] is None
    return losses, null


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


def insert_losses_sqlite(
    session: Session,
    *,
    run_pk: int,
    step: int,
    values: Sequence[float | None],
    indices: np.ndarray | None = None,
) -> None:
    """A plain executemany of tuples through the driver: the ORM's per-row dictionaries made
    N = 200,000 take 1.7 s, this takes about 0.45 s."""
    session.connection().exec_driver_sql(
        "INSERT INTO losses (run_pk, step, sample_index, loss) VALUES (?, ?, ?, ?)",
        [
            (run_pk, step, i, v)
            for i, v in zip(_sample_indices(len(values), indices).tolist(), values, strict=True)
        ],
    )


def insert_losses_portable(
    session: Session,
    *,
    run_pk: int,
    step: int,
    values: Sequence[float | None],
    indices: np.ndarray | None = None,
) -> None:
    positions = _sample_indices(len(values), indices).tolist()
    session.execute(
        insert(Loss),
        [
            {"run_pk": run_pk, "step": step, "sample_index": i, "loss": v}
            for i, v in zip(positions, values, strict=True)
        ],
    )


# losses and windows


def losses_at(session: Session, *, run: Run, step: int) -> np.ndarray:
    """The N losses at a scored step as float64, NaN where NULL."""
    if _is_sqlite(session):
        read = losses_at_sqlite
    elif _is_psycopg(session):
        read = losses_at_postgresql
    else:
        read = losses_at_portable
    return read(session, run=run, step=step)


def losses_at_sqlite(session: Session, *, run: Run, step: int) -> np.ndarray:
    """Read straight from the driver's cursor into numpy (no Row objects): NULL comes back as
    +inf (9e999), which no stored loss can be, since only finite losses are stored."""
    statement = (
        "SELECT sample_index, coalesce(loss, 9e999) FROM losses "
        "WHERE run_pk = ? AND step = ? ORDER BY sample_index"
    )
    with _driver_errors(session, statement), closing(_driver_cursor(session)) as cursor:
        cursor.execute(statement, (run.id, step))
        rows = np.fromiter(iter(cursor.fetchall()), dtype=np.dtype([("i", "<i8"), ("v", "<f8")]))
    out = np.full(run.n_samples, np.nan)
    values = rows["v"]
    values[np.isinf(values)] = np.nan
    out[rows["i"]] = values
    return out


# A row of losses_at_postgresql's answer: int4send(sample_index) || float8send(loss).
_INDEX_AND_LOSS = np.dtype([("sample_index", ">i4"), ("loss", ">f8")])


def losses_at_postgresql(session: Session, *, run: Run, step: int) -> np.ndarray:
    """One row, one value: the server packs each row's sample index and loss as their binary
    send forms (big-endian int4 and float8, the float's bits as stored) into one bytea,
    which psycopg 3 hands over as bytes (a binary cursor) and numpy reads in place. A NULL
    loss makes its row's piece NULL, which string_agg leaves out: that sample stays NaN, as
    do samples without a row. The rows come in any order; each lands at its index.
    N = 200,000 (2 cores, shared): about 0.04 s, the ORM's rows took 0.57-1.0 s."""
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


def losses_at_portable(session: Session, *, run: Run, step: int) -> np.ndarray:
    rows = session.execute(
        select(Loss.sample_index, Loss.loss)
        .where(Loss.run_pk == run.id, Loss.step == step)
        .order_by(Loss.sample_index)
    ).all()
    out = np.full(run.n_samples, np.nan)
    for index, loss in rows:
        if loss is not None:
            out[index] = loss
    return out


def count_losses(session: Session, *, run: Run, step: int) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Loss).where(Loss.run_pk == run.id, Loss.step == step)
        )
        or 0
    )


def loss_page(session: Session, *, run: Run, step: int, offset: int, limit: int) -> list:
    """The losses of samples offset, offset + 1, ... (at most limit, up to N - 1), None for a
    sample with no row: a loss that was not finite, or one a scoring budget did not measure."""
    page: list[float | None] = [None] * max(0, min(limit, run.n_samples - offset))
    rows = session.execute(
        select(Loss.sample_index, Loss.loss).where(
            Loss.run_pk == run.id,
            Loss.step == step,
            Loss.sample_index >= offset,
            Loss.sample_index < offset + len(page),
        )
    )
    for index, loss in rows:
        page[index - offset] = loss
    return page


def sample_history(session: Session, *, run: Run, sample_index: int) -> list[tuple]:
    """(step, update_index, loss) of one sample at every scored checkpoint, by step."""
    read = sample_history_sqlite if _is_sqlite(session) else sample_history_portable
    return read(session, run=run, sample_index=sample_index)


def sample_history_sqlite(session: Session, *, run: Run, sample_index: int) -> list[tuple]:
    """Without statistics SQLite scans the run's whole primary-key range (every loss of every
    step: 0.5 s at 50 checkpoints x 200,000) instead of the per-sample index: named here."""
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


def sample_history_portable(session: Session, *, run: Run, sample_index: int) -> list[tuple]:
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


def sample_histories(
    session: Session, *, run: Run, sample_indices: Sequence[int]
) -> dict[int, list[tuple]]:
    """sample_history of several samples: index -> [(step, update_index, loss)] by step."""
    found: dict[int, list[tuple]] = {int(i): [] for i in sample_indices}
    wanted = sorted(found)
    for start in range(0, len(wanted), HISTORY_BATCH):
        batch = wanted[start : start + HISTORY_BATCH]
        if _is_sqlite(session):  # named index: see sample_history_sqlite
            marks = ",".join("?" * len(batch))
            rows: Any = session.connection().exec_driver_sql(
                "SELECT l.sample_index, l.step, c.update_index, l.loss FROM losses AS l "
                "INDEXED BY ix_losses_sample "
                "JOIN checkpoints AS c ON c.run_pk = l.run_pk AND c.step = l.step "
                f"WHERE l.run_pk = ? AND l.sample_index IN ({marks}) "
                "ORDER BY l.sample_index, l.step",
                (run.id, *batch),
            )
        else:
            rows = session.execute(
                select(Loss.sample_index, Loss.step, CheckpointRow.update_index, Loss.loss)
                .join(
                    CheckpointRow,
                    (CheckpointRow.run_pk == Loss.run_pk) & (CheckpointRow.step == Loss.step),
                )
                .where(Loss.run_pk == run.id, Loss.sample_index.in_(batch))
                .order_by(Loss.sample_index, Loss.step)
            )
        for index, step, update_index, loss in rows:
            found[index].append((step, update_index, loss))
    return found


HISTORY_BATCH = 500  # sample indices per query: SQLite takes at most 32,766 parameters


def get_window(session: Session, *, run: Run, step: int) -> WindowRow | None:
    return session.get(WindowRow, (run.id, step))


def count_null_at(session: Session, *, run: Run, step: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Loss)
            .where(Loss.run_pk == run.id, Loss.step == step, Loss.loss.is_(None))
        )
        or 0
    )


def get_estimates(session: Session, *, run: Run, step: int) -> Estimates | None:
    """What ranked a budgeted checkpoint's samples; None for a checkpoint measured in full."""
    row = session.get(EstimateRow, (run.id, step))
    if row is None:
        return None
    return Estimates(
        np.frombuffer(row.delta, dtype="<f8").astype(np.float64),
        np.frombuffer(row.age, dtype="<i4").astype(np.int32),
    )


def last_windowed(session: Session, *, run: Run, before: int) -> CheckpointRow | None:
    """The run's last scored checkpoint with a window before step `before`: the one a
    budgeted checkpoint's estimates start from."""
    query = select(CheckpointRow).where(
        CheckpointRow.run_pk == run.id,
        CheckpointRow.status == SCORED,
        CheckpointRow.step < before,
    )
    if run.initial_step is not None:
        query = query.where(CheckpointRow.step != run.initial_step)
    return session.scalar(query.order_by(CheckpointRow.step.desc()).limit(1))
