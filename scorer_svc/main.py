"""The app factory. Given prepared API state it serves that alone (the caller owns any
threads); otherwise it builds the scorer's parts and runs intake and worker with the app."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from common.container import in_image
from common.wire.protocol import FRAME_BYTES, MAX_HEADER_BYTES
from scorer_svc.api.docs import serve_docs
from scorer_svc.api.errors import add_error_handlers
from scorer_svc.api.openapi import COMMON_RESPONSES, describe
from scorer_svc.api.query_check import refuse_unknown_query
from scorer_svc.api.routes import (
    dashboard,
    deltas,
    health,
    losses,
    metrics,
    plots,
    run_metrics,
    runs,
    samples,
    weights,
)
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.exit_after import ExitAfterRuns
from scorer_svc.intake.server import Intake, IntakeServer
from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.ranks import RankGroup
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.single_rank import SingleRank
from scorer_svc.scoring.weights import WeightsCache
from scorer_svc.scoring.worker import Worker
from scorer_svc.security.tokens import OPEN_PATHS, OPEN_PREFIXES, bearer, same_token
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.checkpoint_files import remove_partial_files
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.instance import InstanceLock

log = logging.getLogger(__name__)

# No frame a peer sends, before or after it authenticates, may be larger than this.
MAX_FRAME_BYTES = max(FRAME_BYTES, MAX_HEADER_BYTES)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@dataclass
class Background:
    """The threads that fill the database, and the engine they share with the API."""

    engine: Engine
    worker: Worker
    intake: IntakeServer
    lock: InstanceLock
    exit_watch: ExitAfterRuns | None = None

    def start(self) -> None:
        self.worker.start()
        self.intake.start()
        if self.exit_watch is not None:
            self.exit_watch.start()

    def stop(self) -> None:
        log.info("stopping: intake first, then the worker")
        if self.exit_watch is not None:
            self.exit_watch.stop()
        self.intake.stop()
        self.worker.stop()
        self.worker.group.stop_others()
        self.lock.release()
        self.engine.dispose()
        log.info("stopped")


def build_service(
    settings: Settings, group: RankGroup | None = None
) -> tuple[ApiState, Background]:
    """Every part of a scorer, nothing started; the API and the worker share the failures.
    group: the other ranks (under torchrun), which score a share of every checkpoint."""
    with ExitStack() as undo:  # what is taken is given back if a later part fails
        lock = InstanceLock(settings)
        undo.callback(lock.release)
        for path in remove_partial_files(settings.data_dir):
            log.warning("removed %s, a checkpoint file whose writing was cut off", path)
        engine = make_engine(
            settings.resolved_database_url,
            busy_timeout_seconds=settings.database_busy_timeout_seconds,
        )
        undo.callback(engine.dispose)
        lock.hold_name(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            adopted = run_store.adopt_unowned_runs(session, instance=lock.name)
        if adopted:
            log.info("runs made before runs named their scorer: %d taken as %s", adopted, lock.name)
        registry = Registry(settings)
        failures = UnrecordedFailures()
        weights = WeightsCache()
        scoring_metrics = ScorerMetrics()
        progress = ScoringProgress()
        worker = Worker(
            sessions,
            registry,
            failures=failures,
            keep_checkpoints=settings.keep_checkpoints,
            instance=lock.name,
            group=SingleRank() if group is None else group,
            weights=weights,
            metrics=scoring_metrics,
            progress=progress,
        )
        intake = IntakeServer(
            settings.zmq_url,
            Intake(settings, sessions, registry, on_queued=worker.wake, instance=lock.name),
            max_frame_bytes=MAX_FRAME_BYTES,
            curve_secret_key_file=settings.curve_secret_key_file,
            curve_authorized_keys_dir=settings.curve_authorized_keys_dir,
        )
        api = ApiState(
            settings, sessions, failures=failures, weights=weights, group=group,
            instance=lock.name, metrics=scoring_metrics, progress=progress,
            worker_alive=worker.is_alive, datasets=registry.runs.datasets,
        )  # fmt: skip
        undo.pop_all()  # built: the Background gives them back when it stops
        return api, Background(engine, worker, intake, lock)


def create_app(
    settings: Settings,
    state: ApiState | None = None,
    group: RankGroup | None = None,
    stop_server: Callable[[int], None] | None = None,
) -> FastAPI:
    """state: serve it as given, starting nothing; it must carry these settings. group: the
    other ranks of a torchrun-launched scorer (with no state). stop_server(exit code): asks the
    server to shut down as on SIGTERM (settings.exit_after_runs calls it once the runs have
    ended, or the worker has stopped)."""
    if state is not None and state.settings is not settings:
        raise ValueError("the state given was built with other settings than the app's")
    app = FastAPI(
        title="delta-loss scorer",
        description="Per-sample losses of every checkpoint and Delta Loss sampling weights.",
        lifespan=(
            _owned_service(settings, group, stop_server) if state is None else _given_state(state)
        ),
        docs_url=None,  # served with local assets (serve_docs): they work offline
        redoc_url=None,
        responses=COMMON_RESPONSES,
    )
    serve_docs(app)
    for module in (health, metrics, runs, run_metrics, losses, samples, deltas, plots, weights):
        app.include_router(module.router, dependencies=[Depends(refuse_unknown_query)])
    app.include_router(dashboard.router)  # a page: ?utm_source=... and the like are a browser's
    add_error_handlers(app, settings)
    token = settings.shared_token()
    describe(app, token=token is not None)
    _require_token(app, token)
    return app


def _given_state(state: ApiState) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.api = state
        yield

    return lifespan


def _owned_service(
    settings: Settings, group: RankGroup | None, stop_server: Callable[[int], None] | None
) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api, background = build_service(settings, group)
        app.state.api = api
        if settings.exit_after_runs is not None:
            if stop_server is None:
                raise ValueError("exit_after_runs needs a server to stop (give stop_server)")
            background.exit_watch = ExitAfterRuns(
                api.sessions,
                instance=background.lock.name,
                runs=settings.exit_after_runs,
                on_done=stop_server,
                worker_alive=background.worker.is_alive,
            )
        try:
            _log_exposure(settings)
            background.start()
        except BaseException:  # the threads started are daemons; the locks go now
            background.lock.release()
            background.engine.dispose()
            raise
        log.info(
            "scorer ready: instance %s, ZeroMQ %s, REST %s://%s:%d, database %s, device %s",
            background.lock.name,
            settings.zmq_url,
            settings.http_scheme,
            settings.http_host,
            settings.http_port,
            settings.database_for_logs,
            background.worker.registry.models.device,
        )
        try:
            yield
        finally:
            background.stop()

    return lifespan


def _log_exposure(settings: Settings) -> None:
    exposed = settings.exposed_addresses()
    # In the image, every interface is the container's own: the host publishes what it is told
    # (the compose files: 127.0.0.1 only), so the address alone is no warning.
    contained = in_image(os.environ)
    for address in exposed:
        if contained:
            log.info("listening at %s in the container (the host publishes it)", address)
        else:
            log.warning("listening beyond loopback at %s", address)
    if settings.token is None and settings.token_file is None:
        log.info("no token set: any local process can use this scorer")
    else:
        if any(a.startswith("http://") for a in exposed):
            log.warning(
                "the token crosses the network in clear over plain HTTP: serve HTTPS "
                "(tls_certfile, tls_keyfile), or keep REST on loopback behind a TLS proxy"
            )
        if settings.zmq_url in exposed and settings.curve_secret_key_file is None:
            log.warning(
                "the token crosses the network in clear in the ZeroMQ handshake (PLAIN): "
                "use CURVE (curve_secret_key_file, curve_authorized_keys_dir) across hosts"
            )


def _require_token(app: FastAPI, token: str | None) -> None:
    if token is None:
        return

    @app.middleware("http")
    async def check_bearer(request: Request, call_next):  # type: ignore[no-untyped-def]
        path = request.url.path
        if (
            path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or same_token(bearer(request.headers.get("authorization")), token)
        ):
            return await call_next(request)
        return JSONResponse(
            status_code=401,
            content={"detail": "missing or wrong token: send Authorization: Bearer <token>"},
            headers={"WWW-Authenticate": "Bearer"},
        )
