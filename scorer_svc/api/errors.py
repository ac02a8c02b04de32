"""Errors the routes raise and the JSON answers the API gives for them."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from common.selection import SelectionError
from common.validation import describe_errors
from common.wire.errors import UnknownRun
from scorer_svc.config import Settings
from scorer_svc.scoring.progress import Progress
from scorer_svc.storage.outages import DatabaseStatus, Trouble

log = logging.getLogger(__name__)


class DatabaseRefused(Exception):
    """The database gave a damaged read lately: the request is refused without reading it."""

    def __init__(self, trouble: Trouble) -> None:
        super().__init__(trouble.advice)
        self.trouble = trouble


def database_detail(error_name: str, trouble: Trouble) -> str:
    """The detail of a 503 for a database error: what failed and what to do."""
    return f"the scorer's database is unavailable: {error_name} ({trouble.kind}): {trouble.advice}"


class NotScoredYet(Exception):
    """The checkpoint named is queued or being scored: answered 202 with Retry-After."""

    def __init__(self, step: int, status: str, progress: Progress | None = None) -> None:
        super().__init__(status)
        self.step = step
        self.status = status
        self.progress = progress  # while it is being scored


def add_error_handlers(app: FastAPI, settings: Settings) -> None:
    retry_after = {"Retry-After": str(settings.retry_after_seconds)}

    @app.exception_handler(NotScoredYet)
    async def pending(_: Request, exc: NotScoredYet) -> JSONResponse:
        content: dict[str, object] = {"status": exc.status}
        detail = f"step {exc.step} is {exc.status}"
        if exc.progress is not None:
            detail += f": {exc.progress.describe()}"
            content["progress"] = {
                "scored": exc.progress.scored,
                "total": exc.progress.total,
                "seconds": round(exc.progress.seconds, 3),
                "eta_seconds": (
                    None if exc.progress.eta_seconds is None else round(exc.progress.eta_seconds, 1)
                ),
            }
        return JSONResponse(
            status_code=202,
            content={"detail": f"{detail}; retry shortly", **content},
            headers=retry_after,
        )

    @app.exception_handler(UnknownRun)
    async def unknown_run(_: Request, exc: UnknownRun) -> JSONResponse:
        # The code, as a ZeroMQ error reply carries it, tells an unknown run from a 404 for a
        # step: a trainer whose run the scorer no longer knows stops waiting for it.
        return JSONResponse(status_code=404, content={"detail": str(exc), "code": exc.code})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A parameter shared by two dependencies of a route is reported by each: once here.
        problems = dict.fromkeys(describe_errors(exc.errors()))
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems)})

    @app.exception_handler(SelectionError)
    async def no_weights(_: Request, exc: SelectionError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": f"no weights: {exc}"})

    # The driver's own errors too (sqlite3.DatabaseError is no SQLAlchemyError), should one
    # come through a cursor used directly. A run of them is logged by the DatabaseStatus: a
    # line at once, then one a minute with a count. One that is no outage, damage or refusal
    # (kind `error`: a query, a statement or the session at fault) has its traceback logged,
    # the first of a run: a mistake in a route is not hidden behind 503s.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(sqlite3.Error)
    async def database(request: Request, exc: Exception) -> JSONResponse:
        where = f"serving {request.method} {request.url.path}"
        trouble = _status(request).failed(exc, where, traceback=True)
        return JSONResponse(
            status_code=503,
            content={"detail": database_detail(type(exc).__name__, trouble)},
            headers=retry_after,
        )

    @app.exception_handler(DatabaseRefused)
    async def refused(_: Request, exc: DatabaseRefused) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": database_detail("DatabaseError", exc.trouble)},
            headers=retry_after,
        )


def _status(request: Request) -> DatabaseStatus:
    api = getattr(request.app.state, "api", None)
    return api.database if api is not None else DatabaseStatus()
