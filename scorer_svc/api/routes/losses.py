"""Loss history: a checkpoint's loss vector, samples across checkpoints, and a run's whole
history as a CSV or Parquet file."""

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from common.api.schemas import (
    ErrorBody,
    HistoryRequest,
    LossPage,
    LossPoint,
    SampleHistories,
    SampleHistory,
)
from common.wire.protocol import MAX_STEP
from scorer_svc.api.deps import (
    RUN_RESPONSES,
    SCORED_CHECKPOINT_RESPONSES,
    ApiDep,
    LossPageDep,
    RunDep,
    ScoredPagedCheckpointDep,
    SessionDep,
    StepRange,
    StepRangeDep,
    get_step_range,
)
from scorer_svc.api.state import ApiState
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage.downloads import losses_csv, losses_parquet
from scorer_svc.storage.tables import Run

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["losses"])
T = TypeVar("T")

MAX_QUERY_INDICES = 1000  # in a URL; POST takes up to HistoryRequest's bound
NOT_A_SAMPLE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown run, or no such sample"}
}


@router.get("/losses", summary="A checkpoint's losses", responses=SCORED_CHECKPOINT_RESPONSES)
def losses_at_step(
    session: SessionDep, run: RunDep, checkpoint: ScoredPagedCheckpointDep, page: LossPageDep
) -> LossPage:
    """Every sample's loss at a scored checkpoint (default the latest), by sample index, a
    page at a time."""
    first = page.start or 0
    values = loss_store.loss_page(
        session, run=run, step=checkpoint.step, offset=first, limit=page.max_results
    )
    following = first + page.max_results
    return LossPage(
        run_id=run.run_id,
        step=checkpoint.step,
        n_samples=run.n_samples,
        first_index=first,
        losses=values,
        next_page_token=str(following) if following < run.n_samples else None,
    )


@router.get("/samples/{index}/losses", summary="A sample's loss history", responses=NOT_A_SAMPLE)
def sample_losses(
    session: SessionDep,
    run: RunDep,
    index: Annotated[int, PathParam(ge=0, le=MAX_STEP, description="the sample's index")],
    steps: StepRangeDep,
) -> SampleHistory:
    """One sample's loss and loss reduction at every scored checkpoint, by step (within
    min_step and max_step when given)."""
    _check_indices(run, [index])
    rows = loss_store.sample_history(session, run=run, sample_index=index)
    return _history(run, index, rows, steps)


@router.get("/losses/history", summary="Several samples' loss histories", responses=NOT_A_SAMPLE)
def histories(
    session: SessionDep,
    run: RunDep,
    indices: Annotated[
        str,
        Query(
            max_length=12 * MAX_QUERY_INDICES,
            pattern=r"^\d{1,10}(,\d{1,10})*$",
            description=f"sample indices, comma-separated (at most {MAX_QUERY_INDICES}; POST "
            "takes more)",
            examples=["0,7,42"],
        ),
    ],
    steps: StepRangeDep,
) -> SampleHistories:
    """The loss history of each sample named, as /samples/{index}/losses gives one."""
    wanted = sorted({int(i) for i in indices.split(",")})
    if len(wanted) > MAX_QUERY_INDICES:
        raise HTTPException(
            422, detail=f"{len(wanted)} indices: at most {MAX_QUERY_INDICES} in a GET; POST them"
        )
    return _histories(session, run, wanted, steps)


@router.post("/losses/history", summary="Many samples' loss histories", responses=NOT_A_SAMPLE)
def histories_posted(session: SessionDep, run: RunDep, body: HistoryRequest) -> SampleHistories:
    """The loss history of each sample in the body's `indices`, for more than a URL holds."""
    steps = get_step_range(body.min_step, body.max_step)
    return _histories(session, run, sorted(set(body.indices)), steps)


@router.get(
    "/losses/download",
    summary="Download a run's losses",
    response_class=Response,
    responses={
        **RUN_RESPONSES,
        200: {
            "content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
            "description": "one row per sample and scored checkpoint: step, update_index, "
            "sample_index, loss, delta",
        },
    },
)
def download(
    session: SessionDep,
    run: RunDep,
    api: ApiDep,
    format: Annotated[  # noqa: A002 - the query parameter's name
        Literal["csv", "parquet"], Query(description="csv, or parquet (Apache Parquet)")
    ] = "csv",
) -> Response:
    """Every loss of the run's scored checkpoints in long form (step, update_index,
    sample_index, loss, delta = initial loss - loss), by step then sample. Losses that are
    not finite are empty (CSV) or null (Parquet)."""
    run_id = run.run_id
    headers = {"Content-Disposition": f'attachment; filename="{run_id}-losses.{format}"'}
    session.close()  # the file is read in transactions of its own, a checkpoint at a time
    if format == "parquet":  # the whole file is read before its first chunk: a 503 then
        chunks = _begun(losses_parquet(api.sessions, run_id, spool=_spool(api)), 1)
        return StreamingResponse(
            chunks, media_type="application/vnd.apache.parquet", headers=headers
        )
    # the header, then the first checkpoint's rows read before the answer starts
    lines = _begun(losses_csv(api.sessions, run_id), 2)
    return StreamingResponse(lines, media_type="text/csv", headers=headers)


def _begun(chunks: Iterator[T], n: int) -> Iterator[T]:
    """chunks, its first n taken now: a database error there is raised before the response
    starts (a 503); past them, it can only cut the response short."""
    first = list(itertools.islice(chunks, n))
    return itertools.chain(first, chunks)


def _spool(api: ApiState) -> Path | None:
    """Where a Parquet file is put together: the scorer's data_dir, which has room for
    checkpoints (the system's temporary folder when there is none)."""
    folder = Path(api.settings.data_dir)
    return folder if folder.is_dir() else None


def _check_indices(run: Run, indices: Sequence[int]) -> None:
    beyond = [i for i in indices if i >= run.n_samples]
    if beyond:
        raise HTTPException(
            404,
            detail=f"sample {beyond[0]} does not exist: run {run.run_id} has {run.n_samples} "
            f"(indices 0 to {run.n_samples - 1})",
        )


def _histories(
    session: Session, run: Run, indices: Sequence[int], steps: StepRange
) -> SampleHistories:
    _check_indices(run, indices)
    rows = loss_store.sample_histories(session, run=run, sample_indices=indices)
    return SampleHistories(
        run_id=run.run_id, samples=[_history(run, i, rows[i], steps) for i in indices]
    )


def _history(run: Run, index: int, rows: Sequence[tuple], steps: StepRange) -> SampleHistory:
    """The points within `steps`; a loss reduction is from the initial loss all the same."""
    initial = next((loss for step, _, loss in rows if step == run.initial_step), None)
    return SampleHistory(
        run_id=run.run_id,
        sample_index=index,
        history=[
            LossPoint(
                step=step,
                update_index=update_index,
                loss=loss,
                delta=None if loss is None or initial is None else initial - loss,
            )
            for step, update_index, loss in rows
            if steps.holds(step)
        ],
    )
