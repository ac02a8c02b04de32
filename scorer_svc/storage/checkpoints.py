"""Queries of the checkpoints table, and storing a checkpoint's scores (its losses, window and
estimates with its status, in one transaction), keyword-only."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.budget import Estimates
from common.selection import Window
from scorer_svc.storage.losses import insert_losses
from scorer_svc.storage.tables import (
    FAILED,
    PENDING,
    RECEIVED,
    SCORED,
    SCORING,
    SUPERSEDED,
    CheckpointRow,
    EstimateRow,
    Run,
    WindowRow,
    now,
)


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
