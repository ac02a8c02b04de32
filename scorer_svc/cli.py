"""`scorer-svc serve`: flags over a YAML file (--config) over SCORER_* variables over defaults."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import zmq
from pydantic_settings import CliSettingsSource

from common.container import root_in_image
from common.launch import Launch
from scorer_svc.config import (
    Settings,
    SettingsError,
    config_file_values,
    load_settings,
    warn_unknown_environment,
)
from scorer_svc.security.policy import stay_off_the_hub
from scorer_svc.storage.db import (
    DatabaseDamaged,
    DatabaseDriverMissing,
    DatabaseUnavailable,
    check_database,
)
from scorer_svc.storage.instance import InstanceError, InstanceInUse, check_instance_free


def build_parser() -> tuple[argparse.ArgumentParser, CliSettingsSource[Settings]]:
    """The scorer-svc parser, and the source that reads the serve flags, one per setting."""
    parser = argparse.ArgumentParser(prog="scorer-svc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the scorer (ZeroMQ intake, worker, REST API)",
        description="Run the scorer. Every setting but token is a flag, a key of the --config "
        "file and a SCORER_<NAME> environment variable; flags win over the file, the file "
        "over the environment.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a YAML file of settings by name (http_port: 8000)",
    )
    flags: CliSettingsSource[Settings] = CliSettingsSource(Settings, root_parser=serve)
    runs = sub.add_parser(
        "runs",
        help="list or delete runs in the scorer's database, with the scorer stopped",
        description="Offline upkeep of the database and data_dir a scorer uses (the same "
        "settings as serve: --config, SCORER_* variables); with the scorer running, use "
        "the REST API (DELETE /v1/runs/RUN).",
    )
    runs.add_argument("--config", type=Path, metavar="FILE", help="the scorer's YAML settings")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    runs_sub.add_parser("list", help="one line per run: id, owner instance, checkpoints")
    delete = runs_sub.add_parser(
        "delete", help="remove a run's losses, windows, checkpoints and checkpoint files"
    )
    delete.add_argument("run_id", metavar="RUN")
    delete.add_argument(
        "--force",
        action="store_true",
        help="delete even with checkpoints still queued, or a run of another instance (its "
        "files on that scorer's disk stay)",
    )
    health = sub.add_parser(
        "health",
        help="ask the running scorer on this host whether it is healthy (exit 0) or not (1)",
        description="GET /healthz of the scorer these settings describe (--config, SCORER_* "
        "variables: the same as serve's), over loopback when it binds every interface; exit "
        "0 when it answers 200, 1 otherwise, with its answer on stdout. A container's "
        "healthcheck.",
    )
    health.add_argument("--config", type=Path, metavar="FILE", help="the scorer's YAML settings")
    health.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait (5)"
    )
    keys = sub.add_parser("keys", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    keys.add_argument("directory", type=Path, help="folder to write the two files into")
    keys.add_argument("name", help="the key's name: scorer, or a trainer's name")
    return parser, flags


def serve_settings(args: argparse.Namespace, flags: CliSettingsSource[Settings]) -> Settings:
    """The settings of a parsed `serve` command line."""
    if getattr(args, "token", None) is not None:  # a hidden flag, only to refuse it
        raise SettingsError(
            "token is not a flag, since a command line shows in ps: set SCORER_TOKEN, "
            "token in the --config file, or --token-file"
        )
    if has_password(getattr(args, "database_url", None)):
        raise SettingsError(
            "a database_url with a password is not a flag, since a command line shows in ps: "
            "set SCORER_DATABASE_URL, database_url in the --config file, or --database-url-file"
        )
    file_values = config_file_values(args.config) if args.config is not None else {}
    return load_settings(file_values, flags(parsed_args=args))


def has_password(url: str | None) -> bool:
    """Whether a database URL carries a password (one SQLAlchemy cannot parse: no)."""
    if not url:
        return False
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password is not None
    except ArgumentError:
        return False


def _server_class():  # type: ignore[no-untyped-def]
    import uvicorn

    class Server(uvicorn.Server):
        """Treats SIGTERM/SIGINT as a request to stop: shut down cleanly and exit 0,
        instead of re-raising the signal after shutdown."""

        def handle_exit(self, sig, frame):  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def rank_device(settings: Settings, local_rank: int) -> str:
    """The device of one rank under torchrun: its own GPU (cuda:LOCAL_RANK), or the CPU."""
    import torch

    if settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if settings.device in ("auto", "cuda"):
        return f"cuda:{local_rank}"
    raise SettingsError(
        f"device {settings.device} names one GPU, but under torchrun each rank takes its own: "
        "give --device auto (or cuda), and choose the GPUs with CUDA_VISIBLE_DEVICES"
    )


class AddressInUse(RuntimeError):
    """An address the scorer must bind is taken (the message names it and the flag)."""


def check_addresses_free(settings: Settings) -> None:
    """Both addresses must be free before anything starts: otherwise one line, not a
    traceback from deep inside the server's start-up."""
    # A context of its own, terminated at once: closing a socket is asynchronous, terminating
    # its context waits until the address is released for the scorer's own socket.
    context = zmq.Context()
    probe = context.socket(zmq.ROUTER)
    probe.setsockopt(zmq.LINGER, 0)
    try:
        probe.bind(settings.zmq_url)
    except zmq.ZMQError as exc:
        raise AddressInUse(
            f"cannot bind the ZeroMQ address {settings.zmq_url} ({exc}): is another scorer "
            "running there? Stop it, or choose another with --zmq-url"
        ) from None
    finally:
        probe.close(0)
        context.term()
    with socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET) as http:
        http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            http.bind((settings.http_host, settings.http_port))
        except OSError as exc:
            raise AddressInUse(
                f"cannot bind the REST address {settings.http_host}:{settings.http_port} "
                f"({exc.strerror}): is another scorer running there? Stop it, or choose "
                "another with --http-port"
            ) from None


def health_url(settings: Settings) -> str:
    """Where this host reaches the scorer's /healthz: loopback when it binds every interface."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        settings.http_host, settings.http_host
    )
    if ":" in host:
        host = f"[{host}]"
    return f"{settings.http_scheme}://{host}:{settings.http_port}/healthz"


def probe_health(settings: Settings, timeout: float) -> tuple[bool, str]:
    """(healthy, one line saying what the scorer answered, or why it did not)."""
    import httpx

    url = health_url(settings)
    # Its own certificate names the host others reach it by, not loopback: the probe checks
    # health, not identity, so it does not verify the certificate.
    try:  # trust_env=False: no proxy a container is given stands between it and loopback
        answer = httpx.get(url, timeout=timeout, verify=False, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{url}: no answer ({exc.__class__.__name__}: {exc})"
    try:
        body = answer.json()
        said = body.get("detail") or body.get("status") or answer.text
    except ValueError:
        said = answer.text[:200]
    return answer.status_code == 200, f"{url}: {answer.status_code} {said}"


def upkeep(args: argparse.Namespace) -> int:
    """`scorer-svc runs list|delete`: on the database and data_dir of a stopped scorer."""
    from scorer_svc.storage import checkpoints as checkpoint_store
    from scorer_svc.storage import runs as run_store
    from scorer_svc.storage.db import make_engine, make_sessionmaker
    from scorer_svc.storage.instance import InstanceLock, serving
    from scorer_svc.storage.retention import NotOwner, RunBusy, delete_run

    file_values = config_file_values(args.config) if args.config is not None else {}
    settings = load_settings(file_values)
    url = settings.resolved_database_url
    check_database(url)
    if not settings.data_dir.is_dir():
        raise UpkeepError(
            f"data_dir {settings.data_dir} does not exist: give the scorer's settings "
            "(--config FILE, or SCORER_DATA_DIR and SCORER_DATABASE_URL)"
        )
    try:
        lock = InstanceLock(settings)
    except InstanceInUse:
        raise UpkeepError(
            f"the scorer on {settings.data_dir} is running: use its REST API (GET /v1/runs, "
            "DELETE /v1/runs/RUN), or stop it first"
        ) from None
    engine = None
    try:
        engine = make_engine(url, busy_timeout_seconds=settings.database_busy_timeout_seconds)
        try:
            lock.hold_name(engine)
        except InstanceInUse:
            raise UpkeepError(
                f"a scorer is serving as instance {lock.name!r} on this database: use its "
                "REST API, or stop it first"
            ) from None
        name = lock.name
        with make_sessionmaker(engine)() as session:
            if args.action == "list":
                for run in run_store.list_runs(session):
                    n = len(checkpoint_store.list_checkpoints(session, run=run))
                    print(f"{run.run_id}\tinstance {run.instance}\t{n} checkpoints")
                return 0
            found = run_store.get_run(session, run_id=args.run_id)
            if found is None:
                raise UpkeepError(f"no run {args.run_id!r} in {settings.database_for_logs}")
            owner = found.instance
            if owner not in (None, name) and args.force and serving(engine, owner):
                raise UpkeepError(
                    f"run {args.run_id} belongs to the scorer instance {owner!r}, which is "
                    "running: delete it through that scorer's REST API"
                )
            try:
                done = delete_run(
                    session, found, instance=name, data_dir=settings.data_dir, force=args.force
                )
            except (NotOwner, RunBusy) as exc:
                raise UpkeepError(f"{exc} (or give --force)") from None
            print(
                f"deleted run {done.run_id}: {done.checkpoints} checkpoints, {done.losses} "
                f"losses, {done.files} checkpoint files"
            )
            return 0
    finally:
        lock.release()
        if engine is not None:
            engine.dispose()


class UpkeepError(RuntimeError):
    """An offline upkeep command cannot do what was asked (the message says why)."""


# What stops a command at start with one line on stderr (exit 2), not a traceback.
START_ERRORS = (
    SettingsError, DatabaseDamaged, DatabaseDriverMissing, DatabaseUnavailable, AddressInUse,
    InstanceError,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    stay_off_the_hub()  # before anything imports huggingface_hub, which reads it once
    parser, flags = build_parser()
    args = parser.parse_args(argv)
    if args.command == "runs":
        try:
            return upkeep(args)
        except (*START_ERRORS, UpkeepError) as exc:
            print(f"scorer-svc: {exc}", file=sys.stderr)
            return 2
    if args.command == "health":
        try:
            settings = load_settings(
                config_file_values(args.config) if args.config is not None else {}
            )
        except SettingsError as exc:
            print(f"scorer-svc: {exc}", file=sys.stderr)
            return 2
        healthy, answer = probe_health(settings, timeout=args.timeout)
        print(answer)
        return 0 if healthy else 1
    if args.command == "keys":
        from common.wire.curve import create_keys

        public, secret = create_keys(args.directory, args.name)
        print(f"public key (give to peers): {public}\nsecret key (keep): {secret}")
        return 0
    as_root = root_in_image(os.environ, os.geteuid())
    if as_root is not None:
        refused, message = as_root
        print(f"scorer-svc: {message}", file=sys.stderr)
        if refused:
            return 2
    launch = Launch.from_environment()
    rank, world = launch.rank, launch.world
    try:
        settings = serve_settings(args, flags)
        if world > 1:
            device = rank_device(settings, launch.local_rank)
            settings = settings.model_copy(update={"device": device})
        if rank == 0:  # the other ranks touch neither the database nor the addresses
            check_database(settings.resolved_database_url)
            check_addresses_free(settings)
            check_instance_free(settings)
    except START_ERRORS as exc:
        print(f"scorer-svc: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s "
        + (f"rank {rank} " if world > 1 else "")
        + "%(name)s: %(message)s",
    )
    warn_unknown_environment(os.environ)
    group = None
    if world > 1:
        from scorer_svc.scoring.model import resolve_device
        from scorer_svc.scoring.ranks import RankGroup
        from scorer_svc.scoring.registry import Registry

        group = RankGroup.start(resolve_device(settings.device), settings.rank_timeout_seconds)
        if rank != 0:
            return group.follow(Registry(settings))
    import uvicorn

    from scorer_svc.api.access_log import quiet_polls
    from scorer_svc.main import create_app

    _Server = _server_class()
    quiet_polls()

    servers: list[uvicorn.Server] = []  # the one below, once made
    exit_codes: list[int] = []

    def stop_server(code: int) -> None:
        exit_codes.append(code)
        for server in servers:
            server.should_exit = True  # as on SIGTERM: a clean shutdown

    config = uvicorn.Config(
        create_app(settings, group=group, stop_server=stop_server),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=30,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    server = _Server(config)
    servers.append(server)
    server.run()
    if not server.started:
        return 1
    return max(exit_codes, default=0)
