"""The app factory: builds the scorer's parts, starts intake and worker with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from common.selection import SelectionError
from scorer_svc.api.routes import health, losses, runs, weights
from scorer_svc.api.steps import NotScoredYet
from scorer_svc.auth import OPEN_PATHS, bearer, same_token
from scorer_svc.config import Settings
from scorer_svc.db import make_engine, make_sessionmaker
from scorer_svc.failures import UnrecordedFailures
from scorer_svc.intake import Intake, IntakeServer
from scorer_svc.registry import Registry
from scorer_svc.state import ServiceState
from scorer_svc.weights import WeightsCache
from scorer_svc.worker import Worker

log = logging.getLogger(__name__)

HEADER_MARGIN = 1 << 20


def build_state(settings: Settings) -> ServiceState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url,
        busy_timeout_seconds=settings.database_busy_timeout_seconds,
    )
    sessions = make_sessionmaker(engine)
    registry = Registry(settings)
    failures = UnrecordedFailures()
    worker = Worker(
        sessions, registry, failures=failures, keep_checkpoints=settings.keep_checkpoints
    )
    intake = IntakeServer(
        settings.zmq_url,
        Intake(settings, sessions, registry, on_queued=worker.wake),
        max_message_bytes=settings.max_checkpoint_bytes + HEADER_MARGIN,
        curve_secret_key_file=settings.curve_secret_key_file,
        curve_authorized_keys_dir=settings.curve_authorized_keys_dir,
    )
    return ServiceState(settings, engine, sessions, worker, intake, WeightsCache(), failures)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        app.state.service = state
        for address in settings.exposed_addresses():
            log.warning("listening beyond loopback at %s", address)
        if settings.token is None and settings.token_file is None:
            log.info("no token set: any local process can use this scorer")
        state.worker.start()
        state.intake.start()
        log.info(
            "scorer ready: ZeroMQ %s, REST http://%s:%d, database %s, device %s",
            settings.zmq_url,
            settings.http_host,
            settings.http_port,
            settings.resolved_database_url,
            state.worker.registry.device,
        )
        try:
            yield
        finally:
            log.info("stopping: intake first, then the worker")
            state.intake.stop()
            state.worker.stop()
            state.engine.dispose()
            log.info("stopped")

    app = FastAPI(
        title="delta-loss scorer",
        description="Per-sample losses of every checkpoint and Delta Loss sampling weights.",
        lifespan=lifespan,
    )
    for module in (health, runs, losses, weights):
        app.include_router(module.router)
    _add_error_handlers(app, settings)
    _require_token(app, settings.shared_token())
    return app


def _require_token(app: FastAPI, token: str | None) -> None:
    if token is None:
        return

    @app.middleware("http")
    async def check_bearer(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path in OPEN_PATHS or same_token(
            bearer(request.headers.get("authorization")), token
        ):
            return await call_next(request)
        return JSONResponse(
            status_code=401,
            content={"detail": "missing or wrong token: send Authorization: Bearer <token>"},
            headers={"WWW-Authenticate": "Bearer"},
        )


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(NotScoredYet)
    async def pending(_: Request, exc: NotScoredYet) -> JSONResponse:
        checkpoint = exc.checkpoint
        return JSONResponse(
            status_code=202,
            content={
                "detail": f"step {checkpoint.step} is {checkpoint.status}; retry shortly",
                "status": checkpoint.status,
            },
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return JSONResponse(status_code=422, content={"detail": problems})

    @app.exception_handler(SelectionError)
    async def no_weights(_: Request, exc: SelectionError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": f"no weights: {exc}"})

    @app.exception_handler(SQLAlchemyError)
    async def database(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("database error while serving a request: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"detail": f"the scorer's database is unavailable: {type(exc).__name__}"},
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
