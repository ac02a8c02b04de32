"""Typed dependencies: a database session per request, the service state, the run in the path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from scorer_svc import crud
from scorer_svc.models import Run
from scorer_svc.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_run(
    session: SessionDep,
    run_id: Annotated[str, Path(min_length=1, max_length=128)],
) -> Run:
    run = crud.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run '{run_id}'; GET /v1/runs lists the runs")
    return run


RunDep = Annotated[Run, Depends(get_run)]
