"""Queries of the metrics table: a run's logged metrics, stored a batch at a time and read as
MLflow serves them (the latest value of each key; one key's history over a step range)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from scorer_svc.storage.engines import queries_of
from scorer_svc.storage.tables import MetricRow, Run, now


@dataclass(frozen=True)
class Point:
    key: str
    step: int
    value: float
    logged_at: datetime | None = None  # None: when stored


def store_metrics(session: Session, *, run: Run, points: Sequence[Point]) -> int:
    """The points, each replacing what the run had at its key and step (the last of a batch
    wins), in one upsert; how many rows were written."""
    latest = {(p.key, p.step): p for p in points}
    stamp = now()
    rows = [
        {"run_pk": run.id, "key": p.key, "step": p.step, "value": p.value,
         "logged_at": p.logged_at or stamp}
        for p in latest.values()
    ]  # fmt: skip
    queries_of(session).upsert_metrics(session, rows=rows)
    session.commit()
    return len(rows)


def latest_metrics(session: Session, *, run: Run) -> list[MetricRow]:
    """Each key's value at its highest step, by key."""
    last = (
        select(MetricRow.key, func.max(MetricRow.step).label("step"))
        .where(MetricRow.run_pk == run.id)
        .group_by(MetricRow.key)
        .subquery()
    )
    query = (
        select(MetricRow)
        .join(last, and_(MetricRow.key == last.c.key, MetricRow.step == last.c.step))
        .where(MetricRow.run_pk == run.id)
        .order_by(MetricRow.key)
    )
    return list(session.scalars(query))


def metric_history(
    session: Session,
    *,
    run: Run,
    key: str,
    min_step: int | None = None,
    max_step: int | None = None,
    from_step: int | None = None,
    limit: int | None = None,
) -> list[MetricRow]:
    """One key's values by step, within min_step..max_step; from_step: a page's first step."""
    conditions = [MetricRow.run_pk == run.id, MetricRow.key == key]
    for bound in (min_step, from_step):
        if bound is not None:
            conditions.append(MetricRow.step >= bound)
    if max_step is not None:
        conditions.append(MetricRow.step <= max_step)
    query = select(MetricRow).where(*conditions).order_by(MetricRow.step).limit(limit)
    return list(session.scalars(query))
