"""Runs and their checkpoints."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy.orm import Session

from common.api.schemas import (
    CheckpointInfo,
    CheckpointPage,
    DeletedRun,
    ErrorBody,
    RunEnd,
    RunInfo,
    RunPage,
    RunStatus,
)
from scorer_svc.api.deps import (
    RUN_RESPONSES,
    ApiDep,
    Page,
    RunDep,
    RunsQueryDep,
    SessionDep,
    paged,
)
from scorer_svc.api.write_access import (
    WRITE_REFUSED,
    RunTokenDep,
    check_authorized,
    check_writable,
)
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.retention import NotOwner, RunBusy, delete_run
from scorer_svc.storage.tables import Run

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CheckpointsPageDep = Annotated[Page, Depends(paged(100, 1000))]


def run_infos(session: Session, runs: Sequence[Run]) -> list[RunInfo]:
    progress = run_store.run_progress(session, runs=runs)
    tags = run_store.tags_of(session, runs=runs)
    return [
        _run_info(run, progress.get(run.id, run_store.RunProgress()), tags.get(run.id, {}))
        for run in runs
    ]


def _run_info(run: Run, progress: run_store.RunProgress, tags: dict[str, str]) -> RunInfo:
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
            "tags": tags,
            "n_invalid": progress.n_invalid,
            "n_checkpoints": progress.n_checkpoints,
            "last_step": progress.last_step,
            "last_scored_step": progress.last_scored_step,
        }
    )
    return info


@router.get("", summary="List and search the runs")
def list_runs(session: SessionDep, query: RunsQueryDep) -> RunPage:
    """The runs with their name, tags, status and last steps, a page at a time: all of them in
    the order they registered, or those the filters find (status, name, base_model, tags; all
    must hold) in the order asked for, as MLflow's run search orders them."""
    runs, following = run_store.search_runs(session, search=query.search, limit=query.max_results)
    return RunPage(
        runs=run_infos(session, runs),
        next_page_token=None if following is None else f"{following[0]}:{following[1]}",
    )


@router.get("/{run_id}", summary="Get a run", responses=RUN_RESPONSES)
def get_run(session: SessionDep, run: RunDep) -> RunInfo:
    """One run: its settings, status, last steps and how it ended."""
    return run_infos(session, [run])[0]


@router.get("/{run_id}/checkpoints", summary="List a run's checkpoints", responses=RUN_RESPONSES)
def list_checkpoints(session: SessionDep, run: RunDep, page: CheckpointsPageDep) -> CheckpointPage:
    """The run's checkpoints by step, with their status and scoring timings, a page at a
    time."""
    rows = checkpoint_store.list_checkpoints(
        session, run=run, from_step=page.start, limit=page.max_results + 1
    )
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
    responses={**RUN_RESPONSES, 403: WRITE_REFUSED},
)
def end_run(
    session: SessionDep, run: RunDep, body: RunEnd, api: ApiDep, run_token: RunTokenDep = None
) -> RunInfo:
    """The trainer reports that the run finished or failed; the run's status says so until
    the run is resumed (a new hello from its trainer). Reporting again replaces the report.
    With a token set on the scorer it needs that token; without one, the run's own token in
    X-Run-Token (the trainer sends it), unless the scorer was started with
    --allow-unauthenticated-writes."""
    check_writable(run, api, there="report its end there")
    check_authorized(run, api.settings, run_token, f"reporting the end of run {run.run_id}")
    run_store.end_run(session, run=run, status=body.status, detail=body.detail)
    return run_infos(session, [run])[0]


@router.delete(
    "/{run_id}",
    summary="Delete a run",
    responses={
        **RUN_RESPONSES,
        403: WRITE_REFUSED,
        409: {"model": ErrorBody, "description": "a checkpoint of the run is queued or scoring"},
    },
)
def remove_run(
    session: SessionDep, run: RunDep, api: ApiDep, run_token: RunTokenDep = None
) -> DeletedRun:
    """Remove the run's history (losses, windows, checkpoints) and its checkpoint files. With
    a token set on the scorer it needs that token; without one, the run's own token in
    X-Run-Token, unless the scorer was started with --allow-unauthenticated-writes."""
    instance = check_writable(run, api, there="delete it there, where its checkpoint files are")
    check_authorized(run, api.settings, run_token, f"deleting run {run.run_id}")
    try:
        deleted = delete_run(session, run, instance=instance, data_dir=api.settings.data_dir)
    except NotOwner as exc:  # taken over by another instance meanwhile
        raise HTTPException(403, detail=str(exc)) from None
    except RunBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    api.weights.forget(run)
    return DeletedRun(**deleted.__dict__)
