"""Runs and their checkpoints."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from sqlalchemy.orm import Session

from common.api.client import RUN_TOKEN_HEADER
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
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.security.tokens import has_shared_token, is_runs_token
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.retention import NotOwner, RunBusy, delete_run
from scorer_svc.storage.tables import Run

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CheckpointsPageDep = Annotated[Page, Depends(paged(100, 1000))]
READ_ONLY = "this API serves a database read-only: it changes nothing"


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


# The answer of a route that changes a run, refused: where the API cannot change it, or the
# request has not shown it may.
WRITE_REFUSED = {
    "model": ErrorBody,
    "description": "the API serves its database read-only; or the run is another scorer "
    "instance's; or, on a scorer without a token, the request does not carry the run's own "
    f"token in {RUN_TOKEN_HEADER} (nor was the scorer started with "
    "--allow-unauthenticated-writes)",
}
RunTokenDep = Annotated[
    str | None,
    Header(
        alias=RUN_TOKEN_HEADER,
        description="the run's own token: the run_token its trainer sent at registration "
        "(kept in run.json in the trainer's output_dir). Authorizes this request on a scorer "
        "without a token; with a token set, Authorization: Bearer is needed instead",
    ),
]


def _check_writable(run: Run, api: ApiState, there: str) -> str:
    """This scorer's instance; 403 where this API may not change the run whoever asks: a
    database served read-only, or a run another scorer instance owns (`there`: what to do on
    that one)."""
    if api.instance is None:
        raise HTTPException(403, detail=READ_ONLY)
    if run.instance is not None and run.instance != api.instance:
        raise HTTPException(
            403,
            detail=f"run {run.run_id} belongs to the scorer instance {run.instance!r} (this one "
            f"is {api.instance!r}): {there}",
        )
    return api.instance


def _check_authorized(run: Run, settings: Settings, run_token: str | None, action: str) -> None:
    """403 unless the request may change the run: with a token set, the bearer token (checked
    before any route); without one, the run's own token, or the scorer started with
    allow_unauthenticated_writes."""
    if has_shared_token(settings) or settings.allow_unauthenticated_writes:
        return
    if is_runs_token(run.config, run_token):
        return
    other_ways = (
        "set a token on the scorer (SCORER_TOKEN or token_file) and send it as Authorization: "
        "Bearer, or start the scorer with --allow-unauthenticated-writes"
    )
    if not run.config.get("run_token"):
        raise HTTPException(
            403,
            detail=f"{action} needs a token, and run {run.run_id} has no run token of its own "
            f"(its trainer sent none when it registered): {other_ways}",
        )
    sent = "carries none" if run_token is None else f"carries another in {RUN_TOKEN_HEADER}"
    raise HTTPException(
        403,
        detail=f"{action} needs run {run.run_id}'s own token, and the request {sent}: send "
        f"the run_token of run.json in its trainer's output_dir as {RUN_TOKEN_HEADER}, or "
        + other_ways,
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
    _check_writable(run, api, there="report its end there")
    _check_authorized(run, api.settings, run_token, f"reporting the end of run {run.run_id}")
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
    instance = _check_writable(run, api, there="delete it there, where its checkpoint files are")
    _check_authorized(run, api.settings, run_token, f"deleting run {run.run_id}")
    try:
        deleted = delete_run(session, run, instance=instance, data_dir=api.settings.data_dir)
    except NotOwner as exc:  # taken over by another instance meanwhile
        raise HTTPException(403, detail=str(exc)) from None
    except RunBusy as exc:
        raise HTTPException(409, detail=str(exc)) from None
    api.weights.forget(run)
    return DeletedRun(**deleted.__dict__)
