"""Reference forms of the queries each database engine does its own way
(scorer_svc.storage.engines): plain ORM statements that any database SQLAlchemy speaks would
answer. The scorer never runs them; the tests compare each engine's queries with them on the
same data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from scorer_svc.storage.tables import CheckpointRow, Loss, Run


def insert_losses(
    session: Session,
    *,
    run_pk: int,
    step: int,
    values: Sequence[float | None],
    indices: np.ndarray | None = None,
) -> None:
    """One checkpoint's rows, one ORM insert per row: values[j] is the loss of sample
    indices[j] (of sample j without indices), None for NULL."""
    positions = (
        np.arange(len(values)) if indices is None else np.asarray(indices, dtype=np.int64)
    ).tolist()
    session.execute(
        insert(Loss),
        [
            {"run_pk": run_pk, "step": step, "sample_index": i, "loss": v}
            for i, v in zip(positions, values, strict=True)
        ],
    )


def losses_at(session: Session, *, run: Run, step: int) -> np.ndarray:
    """The N losses at a step as float64, NaN where NULL or without a row."""
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


def sample_history(session: Session, *, run: Run, sample_index: int) -> list[tuple]:
    """(step, update_index, loss) of one sample at every scored checkpoint, by step."""
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
    session: Session, *, run: Run, sample_indices: Sequence[int]
) -> list[tuple]:
    """(sample_index, step, update_index, loss) of each of a few samples, by sample then step."""
    return [
        tuple(row)
        for row in session.execute(
            select(Loss.sample_index, Loss.step, CheckpointRow.update_index, Loss.loss)
            .join(
                CheckpointRow,
                (CheckpointRow.run_pk == Loss.run_pk) & (CheckpointRow.step == Loss.step),
            )
            .where(Loss.run_pk == run.id, Loss.sample_index.in_(list(sample_indices)))
            .order_by(Loss.sample_index, Loss.step)
        )
    ]


def count_null_at(session: Session, *, run: Run, step: int) -> int:
    """How many samples have no loss at the step, by scanning its rows (what the stored
    n_null of a checkpoint must equal)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Loss)
            .where(Loss.run_pk == run.id, Loss.step == step, Loss.loss.is_(None))
        )
        or 0
    )
