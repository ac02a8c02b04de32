"""Finding the checkpoint a request names, with the errors the API promises."""

from collections.abc import Callable

from fastapi import HTTPException
from sqlalchemy.orm import Session

from scorer_svc import crud
from scorer_svc.models import FAILED, SCORED, CheckpointRow, Run


class NotScoredYet(Exception):
    def __init__(self, checkpoint: CheckpointRow) -> None:
        super().__init__(checkpoint.status)
        self.checkpoint = checkpoint


def named_checkpoint(session: Session, run: Run, step: int | None) -> CheckpointRow:
    """The checkpoint at `step`, or the latest scored one; 404 when there is none."""
    if step is None:
        latest = crud.latest_scored(session, run=run)
        if latest is None:
            raise HTTPException(404, detail=f"run {run.run_id} has no scored checkpoint yet")
        return latest
    checkpoint = crud.get_checkpoint(session, run=run, step=step)
    if checkpoint is None:
        raise HTTPException(
            404, detail=f"run {run.run_id} has no checkpoint at step {step}; see /checkpoints"
        )
    return checkpoint


def scored_checkpoint(
    session: Session, run: Run, step: int | None, unrecorded: Callable[[int], str | None]
) -> CheckpointRow:
    """As named_checkpoint, and 409 if it failed, NotScoredYet if it is still pending.

    unrecorded gives the error of a failure the database could not store yet."""
    checkpoint = named_checkpoint(session, run, step)
    error = checkpoint.error if checkpoint.status == FAILED else unrecorded(checkpoint.id)
    if error is not None:
        raise HTTPException(409, detail=f"scoring step {checkpoint.step} failed: {error}")
    if checkpoint.status != SCORED:
        raise NotScoredYet(checkpoint)
    return checkpoint
