"""Loss history: a checkpoint's loss vector, and one sample across checkpoints."""

from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam

from common.api_schemas import LossPage, LossPoint, SampleHistory
from common.protocol import MAX_STEP
from scorer_svc import crud
from scorer_svc.api.deps import (
    SCORED_CHECKPOINT_RESPONSES,
    PageDep,
    RunDep,
    ScoredPagedCheckpointDep,
    SessionDep,
)

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["losses"])


@router.get("/losses", responses=SCORED_CHECKPOINT_RESPONSES)
def losses_at_step(
    session: SessionDep, run: RunDep, checkpoint: ScoredPagedCheckpointDep, page: PageDep
) -> LossPage:
    values = crud.loss_page(
        session, run=run, step=checkpoint.step, offset=page.offset, limit=page.limit
    )
    return LossPage(
        run_id=run.run_id,
        step=checkpoint.step,
        offset=page.offset,
        limit=page.limit,
        n_samples=run.n_samples,
        losses=values,
    )


@router.get("/samples/{index}/losses")
def sample_losses(
    session: SessionDep,
    run: RunDep,
    index: Annotated[int, PathParam(ge=0, le=MAX_STEP)],
) -> SampleHistory:
    if index >= run.n_samples:
        raise HTTPException(
            404, detail=f"sample {index} does not exist: run {run.run_id} has {run.n_samples}"
        )
    rows = crud.sample_history(session, run=run, sample_index=index)
    initial = next((loss for step, _, loss in rows if step == run.initial_step), None)
    history = [
        LossPoint(
            step=step,
            update_index=update_index,
            loss=loss,
            delta=None if loss is None or initial is None else initial - loss,
        )
        for step, update_index, loss in rows
    ]
    return SampleHistory(run_id=run.run_id, sample_index=index, history=history)
