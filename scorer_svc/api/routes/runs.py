"""Runs and their checkpoints."""

from fastapi import APIRouter, HTTPException

from common.api_schemas import CheckpointInfo, DeletedRun, RunInfo
from scorer_svc import crud
from scorer_svc.api.deps import ApiDep, RunDep, SessionDep
from scorer_svc.models import Run
from scorer_svc.retention import NotOwner, RunBusy, delete_run

router = APIRouter(prefix="/v1/runs", tags=["runs"])


def run_info(session: SessionDep, run: Run) -> RunInfo:
    n_invalid = None
    if run.initial_step is not None and crud.count_losses(session, run=run, step=run.initial_step):
        n_invalid = crud.count_null_at(session, run=run, step=run.initial_step)
    info = RunInfo.model_validate(run, from_attributes=True)
    return info.model_copy(update={"n_invalid": n_invalid})


@router.get("")
def list_runs(session: SessionDep) -> list[RunInfo]:
    return [run_info(session, run) for run in crud.list_runs(session)]


@router.get("/{run_id}")
def get_run(session: SessionDep, run: RunDep) -> RunInfo:
    return run_info(session, run)


@router.get("/{run_id}/checkpoints")
def list_checkpoints(session: SessionDep, run: RunDep) -> list[CheckpointInfo]:
    return [
        CheckpointInfo.model_validate(c, from_attributes=True)
        for c in crud.list_checkpoints(session, run=run)
    ]


@router.delete(
    "/{run_id}",
    responses={
        403: {"description": "the run belongs to another scorer instance: delete it there"},
        404: {"description": "unknown run"},
        409: {"description": "a checkpoint of the run is queued or being scored"},
    },
)
def remove_run(session: SessionDep, run: RunDep, api: ApiDep) -> DeletedRun:
    """Remove the run's history (losses, windows, checkpoints) and its checkpoint files."""
    if api.instance is None:
        raise HTTPException(403, detail="this API serves a database read-only: delete nothing")
    try:
        deleted = delete_run(session, run, instance=api.instance, data_dir=api.settings.data_dir)
    except NotOwner as exc:
        raise HTTPException(403, detail=str(exc)) from None
    except RunBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    api.weights.forget(run)
    return DeletedRun(**deleted.__dict__)
