"""Runs and their checkpoints."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy.orm import Session

from common.api_schemas import (
    CheckpointInfo,
    CheckpointPage,
    DeletedRun,
    ErrorBody,
    RunEnd,
    RunInfo,
    RunPage,
    RunStatus,
)
from scorer_svc import crud
from scorer_svc.api.deps import RUN_RESPONSES, ApiDep, Page, RunDep, SessionDep, paged
from scorer_svc.models import Run
from scorer_svc.retention import NotOwner, RunBusy, delete_run

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunsPageDep = Annotated[Page, Depends(paged(100, 1000))]
CheckpointsPageDep = Annotated[Page, Depends(paged(100, 1000))]
READ_ONLY = "this API serves a database read-only: it changes nothing"


def run_infos(session: Session, runs: Sequence[Run]) -> list[RunInfo]:
    progress = crud.run_progress(session, runs=runs)
    return [_run_info(session, run, progress.get(run.id, crud.RunProgress())) for run in runs]


def _run_info(session: Session, run: Run, progress: crud.RunProgress) -> RunInfo:
    n_invalid = None
    if run.initial_step is not None and crud.count_losses(session, run=run, step=run.initial_step):
        n_invalid = crud.count_null_at(session, run=run, step=run.initial_step)
    status: RunStatus = "registered" if progress.n_checkpoints == 0 else "training"
    if run.end_status is not None:
        status = "finished" if run.end_status == "finished" else "failed"
    info = RunInfo.model_validate(
        {
            **{c: getattr(run, c) for c in RunInfo.model_fields if hasattr(run, c)},
            # the training run's identity stays on the scorer: with it, another trainer
            # could take the run over as its resume
            "config": {k: v for k, v in run.config.items() if k != "run_token"},
            "status": status,
            "n_invalid": n_invalid,
            "n_checkpoints": progress.n_checkpoints,
            "last_step": progress.last_step,
            "last_scored_step": progress.last_scored_step,
        }
    )
    return info


@router.get("", summary="List the runs")
def list_runs(session: SessionDep, page: RunsPageDep) -> RunPage:
    """The runs in the order they were registered, with their status and last steps, a page
    at a time."""
    runs = crud.list_runs(session, limit=page.max_results + 1, from_id=page.start)
    following = runs[page.max_results] if len(runs) > page.max_results else None
    return RunPage(
        runs=run_infos(session, runs[: page.max_results]),
        next_page_token=None if following is None else str(following.id),
    )


@router.get("/{run_id}", summary="Get a run", responses=RUN_RESPONSES)
def get_run(session: SessionDep, run: RunDep) -> RunInfo:
    """One run: its settings, status, last steps and how it ended."""
    return run_infos(session, [run])[0]


@router.get("/{run_id}/checkpoints", summary="List a run's checkpoints", responses=RUN_RESPONSES)
def list_checkpoints(session: SessionDep, run: RunDep, page: CheckpointsPageDep) -> CheckpointPage:
    """The run's checkpoints by step, with their status and scoring timings, a page at a
    time."""
    rows = crud.list_checkpoints(session, run=run, from_step=page.start, limit=page.max_results + 1)
    following = rows[page.max_results] if len(rows) > page.max_results else None
    return CheckpointPage(
        checkpoints=[
            CheckpointInfo.model_validate(c, from_attributes=True) for c in rows[: page.max_results]
        ],
        next_page_token=None if following is None else str(following.step),
    )


@router.post(
    "/{run_id}/end",
    summary="Report how a run ended",
    responses={
        **RUN_RESPONSES,
        403: {
            "model": ErrorBody,
            "description": "the API serves its database read-only, or the run is another "
            "scorer instance's",
        },
    },
)
def end_run(session: SessionDep, run: RunDep, body: RunEnd, api: ApiDep) -> RunInfo:
    """The trainer reports that the run finished or failed; the run's status says so until
    the run is resumed (a new hello from its trainer). Reporting again replaces the report."""
    if api.instance is None:
        raise HTTPException(403, detail=READ_ONLY)
    if run.instance is not None and run.instance != api.instance:
        raise HTTPException(
            403,
            detail=f"run {run.run_id} belongs to the scorer instance {run.instance!r} (this one "
            f"is {api.instance!r}): report its end there",
        )
    crud.end_run(session, run=run, status=body.status, detail=body.detail)
    return run_infos(session, [run])[0]


@router.delete(
    "/{run_id}",
    summary="Delete a run",
    responses={
        **RUN_RESPONSES,
        403: {
            "model": ErrorBody,
            "description": "the run belongs to another scorer instance: delete it there",
        },
        409: {"model": ErrorBody, "description": "a checkpoint of the run is queued or scoring"},
    },
)
def remove_run(session: SessionDep, run: RunDep, api: ApiDep) -> DeletedRun:
    """Remove the run's history (losses, windows, checkpoints) and its checkpoint files."""
    if api.instance is None:
        raise HTTPException(403, detail=READ_ONLY)
    try:
        deleted = delete_run(session, run, instance=api.instance, data_dir=api.settings.data_dir)
    except NotOwner as exc:
        raise HTTPException(403, detail=str(exc)) from None
    except RunBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    api.weights.forget(run)
    return DeletedRun(**deleted.__dict__)
