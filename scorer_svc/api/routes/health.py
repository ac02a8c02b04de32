"""Liveness that includes the database, the scoring worker and the scoring ranks: a scorer that
cannot read its history (now, or lately: a damaged read), whose worker stopped, or that has
lost a rank, is not healthy."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from common.api.schemas import Health
from scorer_svc.api.deps import ApiDep, SessionDep
from scorer_svc.api.errors import database_detail
from scorer_svc.storage import runs as run_store

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Is the scorer healthy",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "the database cannot be read (or gave a damaged read lately), "
            "the scoring worker stopped, or a scoring rank was lost",
        }
    },
)
def healthz(session: SessionDep, api: ApiDep) -> Health | JSONResponse:
    """200 when the database answers, the scoring worker runs and every scoring rank
    answers; 503 with what is wrong otherwise (a database error seen lately by a request or
    the worker included, until the database answers again). Open without a token."""
    run_store.list_runs(session, limit=1)  # a damaged or missing database answers 503
    api.database.answered()  # an outage seen by any request or the worker ends here
    group = api.group
    named = {"instance": api.instance}
    trouble = api.database.trouble()  # a damaged read elsewhere, lately
    if trouble is not None:
        return JSONResponse(
            status_code=503,
            content={
                "status": "database errors",
                **named,
                "detail": database_detail("DatabaseError", trouble),
            },
            headers={"Retry-After": str(api.settings.retry_after_seconds)},
        )
    if api.worker_alive is not None and not api.worker_alive():
        return JSONResponse(
            status_code=503,
            content={
                "status": "worker stopped",
                **named,
                "detail": "the scoring worker is not running: checkpoints are received but not "
                "scored; see the scorer's log, and restart it",
            },
        )
    if group is None:
        return Health(status="ok", **named)
    if group.lost is not None:
        return JSONResponse(
            status_code=503,
            content={
                "status": "rank lost",
                "ranks": group.world,
                "ranks_alive": False,
                **named,
                "detail": f"a scoring rank stopped answering ({group.lost}): restart the "
                "scorer (torchrun)",
            },
        )
    return Health(status="ok", ranks=group.world, **named)
