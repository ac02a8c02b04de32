"""Liveness that includes the database: a scorer that cannot read its history is not healthy."""

from fastapi import APIRouter

from scorer_svc import crud
from scorer_svc.api.deps import SessionDep
from scorer_svc.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", responses={503: {"description": "the database cannot be read (detail says why)"}}
)
def healthz(session: SessionDep) -> Health:
    crud.list_runs(session, limit=1)  # a damaged or missing database answers 503
    return Health(status="ok")
