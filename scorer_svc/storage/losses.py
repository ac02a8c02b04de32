"""Queries of the losses table, keyword-only: the ones whose fastest form depends on the
database go through the engine's queries (scorer_svc.storage.engines), chosen once when the
engine was made."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from scorer_svc.storage.engines import queries_of
from scorer_svc.storage.tables import Loss, Run


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
    queries_of(session).insert_losses(
        session, run_pk=run_pk, step=step, values=values, indices=indices
    )


def losses_at(session: Session, *, run: Run, step: int) -> np.ndarray:
    """The N losses at a scored step as float64, NaN where NULL."""
    return queries_of(session).losses_at(session, run=run, step=step)


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
    return queries_of(session).sample_history(session, run=run, sample_index=sample_index)


HISTORY_BATCH = 500  # sample indices per query: SQLite takes at most 32,766 parameters


def sample_histories(
    session: Session, *, run: Run, sample_indices: Sequence[int]
) -> dict[int, list[tuple]]:
    """sample_history of several samples: index -> [(step, update_index, loss)] by step."""
    found: dict[int, list[tuple]] = {int(i): [] for i in sample_indices}
    wanted = sorted(found)
    queries = queries_of(session)
    for start in range(0, len(wanted), HISTORY_BATCH):
        batch = wanted[start : start + HISTORY_BATCH]
        for index, step, update_index, loss in queries.sample_history_rows(
            session, run=run, sample_indices=batch
        ):
            found[index].append((step, update_index, loss))
    return found
