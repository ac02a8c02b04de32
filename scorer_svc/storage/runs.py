"""Queries of the runs table (and deleting a run with every row of it), keyword-only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from scorer_svc.storage.engines import queries_of
from scorer_svc.storage.tables import (
    FINISHED,
    PENDING,
    SCORED,
    CheckpointRow,
    EstimateRow,
    Loss,
    MetricRow,
    Run,
    RunTag,
    WindowRow,
    now,
)


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


# What a run's status is, from its end and its checkpoints (as RunInfo reports it).
RUN_STATUSES = ("registered", "training", "finished", "failed")
ORDERS = ("created", "last_step")


@dataclass(frozen=True)
class RunSearch:
    """Which runs, in which order. Every filter given must hold (AND); a tag with value None
    asks only that the run has the key. `start`: the (order key, row id) of a page's first run,
    as the previous page's search gave it (its next_start)."""

    statuses: tuple[str, ...] = ()
    name: str | None = None  # within run_name or run_id, case-insensitive
    base_model: str | None = None  # within base_model, case-insensitive
    tags: tuple[tuple[str, str | None], ...] = ()
    order: str = "created"
    descending: bool = False
    start: tuple[int, int] | None = None


def _has_checkpoint() -> ColumnElement[bool]:
    return exists().where(CheckpointRow.run_pk == Run.id)


def _status_is(status: str) -> ColumnElement[bool]:
    if status == "finished":
        return Run.end_status == FINISHED
    if status == "failed":
        return and_(Run.end_status.is_not(None), Run.end_status != FINISHED)
    if status == "training":
        return and_(Run.end_status.is_(None), _has_checkpoint())
    return and_(Run.end_status.is_(None), not_(_has_checkpoint()))


def _order_key(order: str) -> ColumnElement[int]:
    """created: the row id (runs are numbered as they register); last_step: the run's latest
    checkpoint step, -1 before any."""
    if order == "created":
        return Run.id  # type: ignore[return-value]
    latest = select(func.max(CheckpointRow.step)).where(CheckpointRow.run_pk == Run.id)
    return func.coalesce(latest.scalar_subquery(), -1)


def search_runs(
    session: Session, *, search: RunSearch, limit: int
) -> tuple[Sequence[Run], tuple[int, int] | None]:
    """Up to `limit` runs matching `search`, in its order (ties by row id), and where the next
    page starts (None: this is the last)."""
    key = _order_key(search.order)
    conditions: list[ColumnElement[bool]] = []
    if search.statuses:
        conditions.append(or_(*(_status_is(s) for s in search.statuses)))
    if search.name:
        conditions.append(
            or_(
                func.lower(Run.run_name).contains(search.name.lower(), autoescape=True),
                func.lower(Run.run_id).contains(search.name.lower(), autoescape=True),
            )
        )
    if search.base_model:
        conditions.append(
            func.lower(Run.base_model).contains(search.base_model.lower(), autoescape=True)
        )
    for tag_key, tag_value in search.tags:
        tagged = exists().where(RunTag.run_pk == Run.id, RunTag.key == tag_key)
        if tag_value is not None:
            tagged = tagged.where(RunTag.value == tag_value)
        conditions.append(tagged)
    if search.start is not None:
        at, row = search.start
        if search.descending:
            conditions.append(or_(key < at, and_(key == at, Run.id <= row)))
        else:
            conditions.append(or_(key > at, and_(key == at, Run.id >= row)))
    order = (key.desc(), Run.id.desc()) if search.descending else (key.asc(), Run.id.asc())
    rows = session.execute(
        select(Run, key).where(*conditions).order_by(*order).limit(limit + 1)
    ).all()
    runs = [run for run, _ in rows[:limit]]
    following = (int(rows[limit][1]), rows[limit][0].id) if len(rows) > limit else None
    return runs, following


def tags_of(session: Session, *, runs: Sequence[Run]) -> dict[int, dict[str, str]]:
    """Each run's tags (by row id), in one query; runs without tags are left out."""
    if not runs:
        return {}
    found: dict[int, dict[str, str]] = {}
    rows = session.execute(
        select(RunTag.run_pk, RunTag.key, RunTag.value)
        .where(RunTag.run_pk.in_([run.id for run in runs]))
        .order_by(RunTag.run_pk, RunTag.key)
    )
    for pk, tag_key, value in rows:
        found.setdefault(pk, {})[tag_key] = value
    return found


def _set_tags(session: Session, *, run_pk: int, tags: dict[str, str]) -> None:
    session.execute(delete(RunTag).where(RunTag.run_pk == run_pk))
    session.add_all(RunTag(run_pk=run_pk, key=k, value=v) for k, v in tags.items())


@dataclass(frozen=True)
class RunProgress:
    """What a run's checkpoints say of it."""

    n_checkpoints: int = 0
    last_step: int | None = None  # the latest checkpoint received
    last_scored_step: int | None = None
    # the samples without a loss at the run's initial checkpoint, once its losses are stored
    # (the n_null its scoring recorded); None before
    n_invalid: int | None = None


def run_progress(session: Session, *, runs: Sequence[Run]) -> dict[int, RunProgress]:
    """RunProgress of each run (by row id) in one query of the checkpoints (none of the
    losses); runs with no checkpoint are left out. A scored checkpoint's n_null is the count
    of its NULL losses: its losses are stored with it, in one transaction (store_scores), and
    an initial checkpoint stores a row for each of the run's samples."""
    if not runs:
        return {}
    scored_step = case((CheckpointRow.status == SCORED, CheckpointRow.step))
    initial_null = case(
        (
            and_(CheckpointRow.step == Run.initial_step, CheckpointRow.status == SCORED),
            CheckpointRow.n_null,
        )
    )
    rows = session.execute(
        select(
            CheckpointRow.run_pk,
            func.count(),
            func.max(CheckpointRow.step),
            func.max(scored_step),
            func.max(initial_null),
        )
        .join(Run, Run.id == CheckpointRow.run_pk)
        .where(CheckpointRow.run_pk.in_([run.id for run in runs]))
        .group_by(CheckpointRow.run_pk)
    ).all()
    return {
        pk: RunProgress(int(n), last, scored, None if null is None else int(null))
        for pk, n, last, scored, null in rows
    }


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
    if "run_name" in changed:
        run.run_name = changed["run_name"]
    if "tags" in changed:
        _set_tags(session, run_pk=run.id, tags=changed["tags"] or {})
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
        run_name=config.get("run_name"),
        created_at=now(),
    )
    session.add(run)
    session.flush()  # its row id, for its tags
    _set_tags(session, run_pk=run.id, tags=config.get("tags") or {})
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
    queries_of(session).lock_run(session, run_pk=run.id)
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
    session.execute(delete(RunTag).where(RunTag.run_pk == run.id))
    session.execute(delete(MetricRow).where(MetricRow.run_pk == run.id))
    session.execute(delete(CheckpointRow).where(CheckpointRow.run_pk == run.id))
    session.execute(delete(Run).where(Run.id == run.id))
    session.commit()
    return RemovedRun(len(checkpoints), int(losses or 0), [path for _, path in checkpoints])
